from lmjupyter.compat.torchserve.util import import_class, send_intermediate_predict_response

__all__ = ["import_class", "send_intermediate_predict_response"]
