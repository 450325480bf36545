"""Deploy -> ready -> first token of a 1.1B-shaped Llama on one GPU, with where the time goes (issue 14).

    PYTHONPATH=$PWD python3 benchmarks/gpu/startup_bench.py [--reps 2] [--out startup-gpu.json]

1. Builds (once, in --model-dir) a Llama of TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads,
   4 kv heads, intermediate 5632, vocab 320; random bf16 weights, 1.94 GB) with save_pretrained, and
   reads its files once so that they are in the page cache (as in the issue's 15-18 s figure).
2. "bare": each step of a cold rank in a fresh interpreter, timed alone: import torch, CUDA context,
   import transformers, from_pretrained on the CPU, .to(cuda), from_pretrained(device_map=cuda),
   safe_open(device=cuda) of every tensor, one eager decode step.
3. "server": ``lmjupyter serve --gpus 0`` as a user starts it (the fork server, with the Hugging
   Face classes preloaded, is the default), then ``--preload ''`` (torch only), ``--no-fork-server``,
   and the default with
   ``handler: {cuda_graphs: false}`` (ready -> first token without graph capture). Each: one
   warm-up deploy, then --reps deploys: deploy call -> ready, -> first streamed token, -> answer,
   plus the ranks' phase events (benchmarks/startup/engine_timeline.py).
Prints one JSON document; --out writes it too. ``--smoke`` runs the server part on the CPU with a
tiny Llama, to check the script without a GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "startup"))

SHAPE = dict(hidden=2048, num_layers=22, heads=32, kv_heads=4, intermediate=5632)

BARE = r'''
import json, sys, time
t = {}
s = time.perf_counter(); import torch; t["import torch"] = time.perf_counter() - s
s = time.perf_counter(); torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t["CUDA context (init + first tensor)"] = time.perf_counter() - s
s = time.perf_counter()
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
t["import transformers (+ auto classes)"] = time.perf_counter() - s
d = sys.argv[1]
s = time.perf_counter(); AutoTokenizer.from_pretrained(d); AutoConfig.from_pretrained(d)
t["tokenizer + config"] = time.perf_counter() - s
s = time.perf_counter(); m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
t["from_pretrained (CPU)"] = time.perf_counter() - s
s = time.perf_counter(); m = m.to("cuda"); torch.cuda.synchronize(); t[".to(cuda)"] = time.perf_counter() - s
del m; torch.cuda.empty_cache()
s = time.perf_counter(); m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda")
torch.cuda.synchronize(); t["from_pretrained(device_map=cuda)"] = time.perf_counter() - s
from safetensors import safe_open
s = time.perf_counter()
with safe_open(d + "/model.safetensors", framework="pt", device="cuda:0") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
torch.cuda.synchronize(); t["safe_open(device=cuda:0), every tensor"] = time.perf_counter() - s
del tensors
ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
with torch.no_grad():
    out = m(ids, use_cache=True); torch.cuda.synchronize()
    s = time.perf_counter(); m(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    torch.cuda.synchronize(); t["one eager decode step (after a prefill)"] = time.perf_counter() - s
print(json.dumps({k: round(v, 3) for k, v in t.items()}))
'''


SMOKE_SHAPE = dict(hidden=64, num_layers=2, heads=4, kv_heads=2, intermediate=128)


def build(model_dir: Path, shape: dict, device: str) -> Path:
    if (model_dir / "config.json").exists():
        return model_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmjupyter.models.tiny import _save, build_tokenizer

    tokenizer = build_tokenizer(model_dir)
    config = LlamaConfig(vocab_size=max(320, len(tokenizer)), hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=shape["num_layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    _save(model.cpu(), tokenizer, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = config.vocab_size + 7   # never emitted: every request runs its budget
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    return model_dir


def warm_page_cache(model_dir: Path) -> int:
    size = 0
    for path in model_dir.iterdir():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                size += len(chunk)
    return size


def bare(model_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", BARE, str(model_dir)], capture_output=True, text=True, timeout=300)
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def deploy_once(server, model_dir: Path, handler: dict, device_type: str) -> dict:
    from engine_timeline import phases_of

    client = server.client
    config = {"deviceType": device_type, "handler": {"max_new_tokens": 8, **handler}}
    started = time.perf_counter()
    client.deploy("llm", model_dir=str(model_dir), config=config, wait=True)
    ready = time.perf_counter() - started
    first = None
    for _ in client.stream("llm", {"input_ids": [5, 6, 7, 8], "max_new_tokens": 8}):
        if first is None:
            first = time.perf_counter() - started
    answered = time.perf_counter() - started
    events = client.events("llm")["events"]
    client.undeploy("llm")
    return {"deploy call -> ready": ready, "deploy call -> first token": first,
            "deploy call -> answer (8 tokens)": answered, **phases_of(events)}


def server_runs(workdir: str, model_dir: Path, args: list[str], handler: dict, reps: int, device_type: str) -> dict:
    from engine_timeline import Server

    server = Server(workdir, "--allow-root", str(model_dir), *(["--gpus", "0"] if device_type == "gpu" else []), *args)
    try:
        launcher = server.wait_launcher()
        deploy_once(server, model_dir, handler, device_type)  # warm-up: .pyc files, CUDA's caches
        runs = [deploy_once(server, model_dir, handler, device_type) for _ in range(reps)]
    finally:
        server.stop()
    keys = [k for k in runs[0] if all(k in r and r[k] is not None for r in runs)]
    summary = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    summary["launcher"] = {k: launcher.get(k) for k in ("kind", "state", "preloaded", "error") if k in launcher}
    summary["runs"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs]
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--model-dir", default="/tmp/lmj-startup-llama-1b")
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model: check the script itself")
    args = parser.parse_args(argv)
    shape, device_type = (SMOKE_SHAPE, "cpu") if args.smoke else (SHAPE, "gpu")
    if args.smoke and args.model_dir == parser.get_default("model_dir"):
        args.model_dir = tempfile.mkdtemp(prefix="lmj-startup-smoke-")
    model_dir = build(Path(args.model_dir), shape, "cpu" if args.smoke else "cuda")
    result = {"model": {**shape, "bytes_in_page_cache": warm_page_cache(model_dir), "path": str(model_dir)}}
    if not args.skip_bare and not args.smoke:
        result["bare (fresh interpreter, s)"] = bare(model_dir)
        print(json.dumps(result, indent=1), flush=True)
    variants = {"fork server (default)": ([], {}), "--preload '' (torch only)": (["--preload", ""], {}),
                "--no-fork-server": (["--no-fork-server"], {}),
                "fork server, cuda_graphs: false": ([], {"cuda_graphs": False})}
    with tempfile.TemporaryDirectory() as workdir:
        for label, (server_args, handler) in variants.items():
            try:
                result[f"server: {label}"] = server_runs(workdir, model_dir, server_args, handler, args.reps,
                                                         device_type)
            except Exception as exc:  # keep the other rows
                result[f"server: {label}"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps({label: result[f"server: {label}"]}, indent=1), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
