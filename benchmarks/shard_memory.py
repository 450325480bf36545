"""Peak memory per rank when loading a causal LM: one process vs tp, pp, pptp.

    python benchmarks/shard_memory.py [--hidden 1024 --layers 8 --vocab 32000] [--out FILE]

Builds a random Llama (GQA) once with ``lmjupyter.models.tiny``, then for each
mode starts real torchrun ranks (CPU, gloo) that run the CausalLMHandler's
``initialize`` and one short batch. Each rank samples its own memory every
5 ms: ``anon`` is private memory (what the rank really costs), ``rss`` also
counts file pages mapped from the checkpoint (safetensors slices and
``from_pretrained`` may keep weights as views of the mmap'd file: shared
page cache, only resident once touched). Figures are peaks over initialize
plus one batch (which touches every weight the rank holds), minus the rank's
level before ``initialize``, in MB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = {
    "single": (1, {}),
    "tp2": (2, {"parallelType": "tp"}),
    "pp2": (2, {"parallelType": "pp", "pippy": {"chunks": 1}}),
    "pptp4": (4, {"parallelType": "pptp", "handler": {"tp_size": 2}}),
}


def _status_kb() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                fields[key] = int(value.split()[0])
    return fields


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.stop = False

    def run(self):
        while not self.stop:
            for key, value in _status_kb().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.005)


def rank_main(spec_path: str, out_dir: str) -> None:
    """What each rank runs: measure around initialize and one batch."""
    from lmjupyter.handlers.causal_lm import CausalLMHandler
    from lmjupyter.worker.context import Context

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ctx = Context(model_name="m", model_dir=spec["model_dir"], model_yaml_config=spec["config"],
                  rank=rank, local_rank=rank, world_size=world)
    import torch.distributed  # noqa: F401  (imports before the baseline)
    import transformers  # noqa: F401

    before = _status_kb()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    handler = CausalLMHandler()
    handler.initialize(ctx)
    load_s = time.perf_counter() - started
    after_load = dict(sampler.peak)
    handler.handle([{"prompt": "Hello world", "max_new_tokens": 4}, "The quick brown fox"], ctx)
    sampler.stop = True
    sampler.join()
    end = _status_kb()
    peak = sampler.peak
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    record = {
        "rank": rank, "load_s": round(load_s, 2), "baseline_rss_mb": mb(before["VmRSS"]),
        # after initialize and one batch (which touches every weight the rank holds)
        "rss_peak_mb": mb(peak["VmRSS"] - before["VmRSS"]),
        "anon_peak_mb": mb(peak["RssAnon"] - before["RssAnon"]),
        "file_peak_mb": mb(peak["RssFile"] - before["RssFile"]),
        "rss_after_load_mb": mb(after_load["VmRSS"] - before["VmRSS"]),
        # what stays once loading is over and its transient file mappings are gone
        "rss_end_mb": mb(end["VmRSS"] - before["VmRSS"]),
        "anon_end_mb": mb(end["RssAnon"] - before["RssAnon"]),
        "file_end_mb": mb(end["RssFile"] - before["RssFile"]),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--model-dir", help="reuse a model folder instead of building one")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--rank-main", nargs=2, metavar=("SPEC", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        return rank_main(*args.rank_main)

    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="shard-memory-"))
    model_dir = args.model_dir
    if not model_dir:
        from lmjupyter.models.tiny import build_tiny_llama

        model_dir = str(build_tiny_llama(work / "model", num_layers=args.layers, hidden=args.hidden,
                                         heads=16, kv_heads=8, intermediate=int(args.hidden * 2.75),
                                         vocab=args.vocab, init_std=0.02))
    size_mb = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) / 2**20
    results = {"model_dir": model_dir, "checkpoint_mb": round(size_mb, 1), "modes": {}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    for mode in args.modes.split(","):
        nproc, config = MODES[mode]
        out = work / mode
        out.mkdir()
        spec = out / "spec.json"
        spec.write_text(json.dumps({"model_dir": model_dir, "config": config}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--monitor-interval=0.1", __file__, "--rank-main", str(spec), str(out)]
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
        results["modes"][mode] = ranks
        peaks = ", ".join(f"r{r['rank']}: peak {r['rss_peak_mb']} (anon {r['anon_peak_mb']}), "
                          f"end {r['rss_end_mb']} (anon {r['anon_end_mb']} + file {r['file_end_mb']})"
                          for r in ranks)
        print(f"{mode:7s} {peaks}", flush=True)
    print(f"checkpoint: {results['checkpoint_mb']} MB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
