"""A deploy made as soon as a new ``lmjupyter serve`` answers: how long to the first answer.

    python benchmarks/startup/first_deploy.py [--reps 3] [--tree OLD_CHECKOUT ...]

A notebook's first ``%lmserve deploy`` often comes seconds after the server started, while the
fork server is still importing torch and its ``--preload`` modules. Per repetition: start a
fresh server, deploy (``wait: true``) the moment it prints its URL, predict once, stop it.
Cases: the echo handler (1 rank) and the tiny Llama of the built-in handler (1 rank). Each
``--tree`` (a checkout of lmjupyter, first on PYTHONPATH) runs beside this one, alternating, so
that an older design is measured in the same run. Medians in s.
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
sys.path.insert(0, HERE)

from engine_timeline import Server, echo_body  # noqa: E402


def first_deploy(workdir: str, tree: str, body: dict, request, extra: list[str]) -> dict:
    python_path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    server = Server(workdir, *extra, env={"PYTHONPATH": python_path})
    try:
        answering = time.perf_counter() - started
        server.client.deploy("first", wait=True, **body)
        server.client.predict("first", request)
        first = time.perf_counter() - started
        launcher = server.client.health()["launcher"]
        return {"server start -> answering": round(answering, 3),
                "server start -> first answer": round(first, 3),
                "deploy call -> first answer": round(first - answering, 3),
                "forked": launcher.get("forked", 0)}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="another lmjupyter checkout to run beside")
    args = parser.parse_args()
    trees = {"this checkout": ROOT, **{os.path.basename(os.path.normpath(t)) or t: t for t in args.tree}}
    results: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "tiny-llama")
        subprocess.run([sys.executable, "-m", "lmjupyter.models.tiny", model_dir, "--family", "llama"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cases = {"echo 1 rank": (echo_body(1), {"x": 1}, []),
                 "tiny llama 1 rank": ({"model_dir": model_dir, "config": {"deviceType": "cpu"}},
                                       {"prompt": "Hello", "max_new_tokens": 4}, ["--allow-root", workdir])}
        runs: dict = {}
        for rep in range(args.reps + 1):  # the first round warms the page cache and .pyc files
            for case, (body, request, extra) in cases.items():
                for label, tree in trees.items():
                    run = first_deploy(workdir, tree, body, request, extra)
                    if rep:
                        runs.setdefault(f"{case}, {label}", []).append(run)
        for key, samples in runs.items():
            results[key] = {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
