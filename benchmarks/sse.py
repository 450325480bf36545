"""Per-token cost of OpenAI's SSE stream against the native ``?stream=1`` NDJSON stream, same model.

    python benchmarks/sse.py                      # CPU: a tiny Llama, 1 and 16 clients, ~3 minutes
    python benchmarks/sse.py --device gpu --shape 1.1b --dtype bfloat16   # the device machine

Both paths run against one ``lmjupyter serve`` and one deployed model (the built-in
handler, ``batchSize`` = the most clients); each client streams requests of
``--tokens`` tokens back to back (``ignore_eos``, greedy) for ``--duration`` seconds.
The two paths are interleaved (native, SSE, native, SSE ...) ``--reps`` times and the
median tokens per second reported, with the SSE/native ratio (the target: >= 0.95).
Clients are asyncio + httpx in this process and count frames without parsing JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import TOKEN, Server, cpu_split, versions, wait_idle_cpu  # noqa: E402

SHAPES = {  # (layers, hidden, heads, kv_heads, intermediate)
    "tiny": (2, 64, 4, 2, None),
    "1.1b": (22, 2048, 32, 4, 5632),  # TinyLlama-1.1B's shape, random weights
}
PROMPT = "Once upon a time"


def build_model(root: str, shape: str) -> str:
    from lmjupyter.models.tiny import build_tiny_llama

    layers, hidden, heads, kv_heads, intermediate = SHAPES[shape]
    extra = {"intermediate": intermediate} if intermediate else {}
    return str(build_tiny_llama(os.path.join(root, f"llama-{shape}"), num_layers=layers, hidden=hidden,
                                heads=heads, kv_heads=kv_heads, **extra))


async def client_loop(http, url: str, body: dict, marker: bytes, until: float) -> tuple[int, int]:
    """Stream requests until the deadline; (tokens, requests) received."""
    tokens = requests = 0
    while time.monotonic() < until:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:500]!r}")
            async for line in response.aiter_lines():
                if line.startswith(marker):
                    tokens += 1
        requests += 1
    return tokens, requests


async def measure(server: Server, path: str, body: dict, marker: bytes, clients: int, duration: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"Authorization": f"token {TOKEN}"}, timeout=600, limits=limits) as http:
        before, started = cpu_split(server), time.monotonic()
        counts = await asyncio.gather(*(client_loop(http, server.url + path, body, marker.decode(),
                                                    started + duration) for _ in range(clients)))
        elapsed, after = time.monotonic() - started, cpu_split(server)
    tokens = sum(t for t, _ in counts)
    return {"tok_s": tokens / elapsed, "tokens": tokens, "requests": sum(r for _, r in counts), "s": elapsed,
            # CPU per token: the server process, and the ranks with their torchrun agent (steadier than tok/s
            # on a shared machine)
            "server_us": (after["server"] - before["server"]) / max(1, tokens) * 1e6,
            "ranks_us": (after["ranks"] - before["ranks"]) / max(1, tokens) * 1e6}


def paths(model: str, tokens: int) -> dict:
    native = {"prompt": PROMPT, "max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
    sse = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
           "ignore_eos": True}
    # a token's frame: native {"partial": ...}; SSE a chunk whose finish_reason is still null
    return {"native": (f"lmserve/api/models/{model}/predict?stream=1", native, b'{"partial"'),
            "sse": ("v1/completions", sse, b'data: {"id"')}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", default=None, help="handler.dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    workdir = tempfile.mkdtemp(prefix="lmj-sse-")
    model_dir = build_model(workdir, args.shape)
    server = Server(workdir)
    results: dict = {}
    try:
        handler = {"max_new_tokens": args.tokens, **({"dtype": args.dtype} if args.dtype else {})}
        server.call("POST", "models", json={"name": "llm", "model_dir": model_dir, "wait": True, "config": {
            "deviceType": args.device, "batchSize": max(clients), "responseTimeout": 600, "handler": handler}})
        routes = paths("llm", args.tokens)
        for name, (path, body, marker) in routes.items():  # warm-up (and CUDA graphs)
            asyncio.run(measure(server, path, body, marker, max(clients), 2.0))
        runs = {(c, name): [] for c in clients for name in routes}
        for rep in range(args.reps):
            for c in clients:
                for name, (path, body, marker) in routes.items():
                    if args.device == "cpu":
                        wait_idle_cpu()
                    run = asyncio.run(measure(server, path, body, marker, c, args.duration))
                    runs[(c, name)].append(run)
                    print(f"rep {rep + 1}/{args.reps} {c:>3} clients {name:<6} {run['tok_s']:8.1f} tok/s "
                          f"({run['requests']} requests)  CPU us/token: server {run['server_us']:.0f} "
                          f"ranks {run['ranks_us']:.0f}", flush=True)
        print("\n| clients | native ?stream=1: tok/s, server CPU us/token | OpenAI SSE: tok/s, server CPU us/token "
              "| SSE / native tok/s |\n| ---: | ---: | ---: | ---: |")
        for c in clients:
            med = {name: {key: statistics.median(r[key] for r in runs[(c, name)]) for key in ("tok_s", "server_us")}
                   for name in routes}
            ratio = med["sse"]["tok_s"] / med["native"]["tok_s"]
            results[str(c)] = {"median": med, "ratio": ratio, "runs": {name: runs[(c, name)] for name in routes}}
            print(f"| {c} | {med['native']['tok_s']:.1f}, {med['native']['server_us']:.0f} | "
                  f"{med['sse']['tok_s']:.1f}, {med['sse']['server_us']:.0f} | {ratio:.3f} |")
    finally:
        server.stop()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "versions": versions(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
