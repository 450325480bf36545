from lmjupyter.compat.torchserve.distributed import get_pipeline_driver, initialize_rpc_workers

__all__ = ["get_pipeline_driver", "initialize_rpc_workers"]
