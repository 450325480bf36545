"""Interleaved A/B of two versions of the engine under the same wrk load.

    python benchmarks/ab.py 53291b0 HEAD                      # git refs (their lmjupyter/ is exported)
    python benchmarks/ab.py /tmp/a /tmp/b --reps 6 --duration 3 --scenarios b1c1,b8c8

Each side is an ``lmjupyter`` package (a git ref, or a folder that holds ``lmjupyter/``) run
as its own ``lmjupyter serve`` with echo models of batchSize 1 and 8 (maxBatchDelay 5). Both
servers stay up; each repetition runs every scenario on A and on B, alternating which goes
first, so that drift of this shared machine hits both alike. Prints medians of req/s, p50 and
CPU per request (server, ranks, wrk). Used for the before/after numbers in commit messages and
in RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ECHO, Server, echo_config, run_wrk, wait_idle_cpu  # noqa: E402


def package(side: str, scratch: str) -> tuple[str, str]:
    """(folder holding lmjupyter/, label) for a folder or a git ref."""
    if os.path.isdir(os.path.join(side, "lmjupyter")):
        return side, side
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "rev-parse", "--short", side], capture_output=True, text=True,
                            check=True, cwd=repo).stdout.strip()
    root = os.path.join(scratch, commit)
    os.makedirs(root, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "lmjupyter"], capture_output=True, check=True, cwd=repo)
    subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
    return root, f"{side} ({commit})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--scenarios", default="b1c1,b8c1,b1c8,b8c8,b8c32",
                        help="comma-separated b<batchSize>c<connections>")
    args = parser.parse_args(argv)
    scenarios = [(s, int(s[1:].split("c")[0]), int(s.split("c")[1])) for s in args.scenarios.split(",")]
    scratch = tempfile.mkdtemp(prefix="lmj-ab-")
    servers = {}
    try:
        for name, side in (("A", args.a), ("B", args.b)):
            root, label = package(side, scratch)
            workdir = os.path.join(scratch, name)
            os.makedirs(workdir)
            server = Server(workdir, package_root=root)
            servers[name] = server
            for batch in sorted({b for _, b, _ in scenarios}):
                server.deploy(f"echo-b{batch}", ECHO, echo_config(batch))
            print(f"{name}: {label}, event loop {server.loop}", flush=True)
        runs = {(name, s): [] for name in servers for s, _, _ in scenarios}
        for label, batch, connections in scenarios:  # warm-up
            for server in servers.values():
                run_wrk(server.predict_url(f"echo-b{batch}"), connections, 1)
        for rep in range(args.reps):
            order = ["A", "B"] if rep % 2 == 0 else ["B", "A"]
            for label, batch, connections in scenarios:
                for name in order:
                    wait_idle_cpu()
                    server = servers[name]
                    runs[(name, label)].append(
                        run_wrk(server.predict_url(f"echo-b{batch}"), connections, args.duration, server=server))
        for label, _, _ in scenarios:
            line = [f"{label:<6}"]
            for name in servers:
                items = runs[(name, label)]
                med = lambda key: statistics.median(i[key] for i in items)  # noqa: E731
                line.append(f"{name}: {med('rps'):6.0f} req/s p50 {med('p50_us') / 1000:5.2f} ms, CPU us/req "
                            f"server {med('server_us'):3.0f} ranks {med('ranks_us'):3.0f} wrk {med('wrk_us'):3.0f}")
            print(" | ".join(line), flush=True)
        for (name, label), items in runs.items():
            print(f"  {name} {label}: req/s {[round(i['rps']) for i in items]}, "
                  f"others used {max(i['foreign_cpu'] for i in items):.2f} cores at most")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
