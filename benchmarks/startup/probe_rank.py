"""A torchrun rank that writes when it got where (wall clock): started, torch imported, group joined.

Run by ``benchmarks/startup/breakdown.py`` as the training script of a plain torchrun group, so
that the cost of each start-up step is measured without the engine in the way.
"""
import json
import os
import sys
import time

started = time.time()
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

imported = time.time()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    dist.init_process_group("gloo")
    dist.barrier()
joined = time.time()
with open(os.path.join(sys.argv[1], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump({"started": started, "torch_imported": imported, "group_joined": joined, "exited": time.time()}, f)
