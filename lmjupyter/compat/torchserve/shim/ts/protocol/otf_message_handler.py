from lmjupyter.compat.torchserve.util import send_intermediate_predict_response

__all__ = ["send_intermediate_predict_response"]
