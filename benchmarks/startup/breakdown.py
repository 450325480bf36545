"""Where a worker start's time goes, step by step (issue 14, part 1).

    python benchmarks/startup/breakdown.py [--reps 5] [--only imports,torchrun,engine]

``imports``: a bare interpreter, ``import torch``, what torchrun's agent imports, transformers.
``torchrun``: plain torchrun groups (1 and 2 gloo ranks) running ``probe_rank.py``: launch ->
the rank's first line (agent start + its torch import + rendezvous + spawn), the rank's torch
import, ``init_process_group`` + barrier, the rank's end -> torchrun's exit.
``engine``: the engine's own start-up timeline (phase events the ranks send, as the server
received them) for a deploy of the echo handler, cold (no fork server) and from the fork server.
``llm``: the same for a tiny Llama (built-in handler, ``python -m lmjupyter.models.tiny``), 1 rank
and tp=2: from the fork server (default: Hugging Face classes preloaded), with ``--preload ''``
(torch only), and cold.
Medians of ``--reps`` runs after one unmeasured run; seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def timed(cmd: list[str], env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_of(reps: int, run) -> dict:
    run()  # page cache, .pyc files
    samples = [run() for _ in range(reps)]
    if isinstance(samples[0], dict):
        return {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}
    return round(statistics.median(samples), 3)


def bench_imports(reps: int) -> dict:
    py = sys.executable
    base = median_of(reps, lambda: timed([py, "-c", "pass"]))
    out = {"python -c pass": base}
    for label, code in [("import torch", "import torch"),
                        ("torchrun's agent imports", "import torch.distributed.run, "
                         "torch.distributed.elastic.agent.server.local_elastic_agent"),
                        ("import torch + transformers Llama", "import torch, transformers; "
                         "from transformers import LlamaForCausalLM, AutoTokenizer")]:
        try:
            out[label] = round(median_of(reps, lambda: timed([py, "-c", code])) - base, 3)
        except subprocess.CalledProcessError:
            out[label] = None
    return out


def torchrun_once(nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        launched = time.time()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                        "--nproc-per-node", str(nproc), "--monitor-interval", "0.1",
                        os.path.join(HERE, "probe_rank.py"), out],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = time.time()
        ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(nproc)]
    first = max(r["started"] for r in ranks)
    imported = max(r["torch_imported"] for r in ranks)
    joined = max(r["group_joined"] for r in ranks)
    return {"launch -> rank's first line": first - launched,
            "rank: import torch": imported - first,
            "rank: init_process_group + barrier": joined - imported,
            "rank done -> torchrun exited": ended - max(r["exited"] for r in ranks),
            "total": ended - launched}


def bench_torchrun(reps: int) -> dict:
    return {f"torchrun {n} rank(s)": median_of(reps, lambda n=n: torchrun_once(n)) for n in (1, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="imports,torchrun,engine,llm")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    results = {}
    if "imports" in only:
        results["imports (s above a bare interpreter)"] = bench_imports(args.reps)
        print(json.dumps(results, indent=2), flush=True)
    if "torchrun" in only:
        results.update(bench_torchrun(args.reps))
        print(json.dumps(results, indent=2), flush=True)
    if "engine" in only:
        from engine_timeline import bench_engine  # noqa: E402  (beside this file)

        results.update(bench_engine(args.reps))
        print(json.dumps(results, indent=2), flush=True)
    if "llm" in only:
        from engine_timeline import bench_engine  # noqa: E402

        with tempfile.TemporaryDirectory() as models:
            model_dir = os.path.join(models, "tiny-llama")
            subprocess.run([sys.executable, "-m", "lmjupyter.models.tiny", model_dir, "--family", "llama"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            request = {"prompt": "Hello", "max_new_tokens": 4}
            one = {"model_dir": model_dir, "config": {"deviceType": "cpu"}}
            two = {"model_dir": model_dir, "config": {"deviceType": "cpu", "parallelType": "tp",
                                                      "torchrun": {"nproc-per-node": 2}}}
            allow = ["--allow-root", models]
            results.update(bench_engine(args.reps, variants={
                "fork server (default)": allow, "--preload '' (torch only)": [*allow, "--preload", ""],
                "--no-fork-server": [*allow, "--no-fork-server"]},
                cases={"tiny llama 1 rank": (one, request), "tiny llama tp=2": (two, request)}))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
