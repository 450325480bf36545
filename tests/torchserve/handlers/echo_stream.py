"""TorchServe's streaming example (docs/inference_api.md), as it is there."""
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if type(data) is list:
        for i in range(3):
            send_intermediate_predict_response(["intermediate_response"], context.request_ids,
                                               "Intermediate Prediction success", 200, context)
        return ["hello world "]
