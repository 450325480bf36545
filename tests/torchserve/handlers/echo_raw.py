"""A module-level entry point: ``handle(data, context)``, called first with no data to load.

Echoes each request's body back, with the answer type, status and headers the
client asks for through X-Answer-* headers; PredictionException on X-Fail.
"""
from ts.utils.util import PredictionException

loaded = False


def handle(data, context):
    global loaded
    if not data:
        loaded = True  # TorchServe's load call
        return None
    answers = []
    for idx, row in enumerate(data):
        if context.get_request_header(idx, "X-Fail"):
            raise PredictionException("Some Prediction Error", 513)
        body = row.get("data") or row.get("body")
        answer_type = context.get_request_header(idx, "X-Answer-Type")
        if answer_type:
            context.set_response_content_type(idx, answer_type)
        status = context.get_request_header(idx, "X-Answer-Status")
        if status:
            context.set_response_status(int(status), "Made Up", idx)
        header = context.get_request_header(idx, "X-Answer-Header")
        if header:
            context.set_response_header(idx, "X-From-Handler", header)
        answers.append(body if loaded else "not loaded")
    return answers
