from lmjupyter.compat.torchserve.distributed import create_checkpoints_json, get_ds_engine

__all__ = ["create_checkpoints_json", "get_ds_engine"]
