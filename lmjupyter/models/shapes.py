"""Real-sized Llama shapes with random weights, for benchmarks on a GPU (nothing is downloaded).

``1.1b`` is TinyLlama-1.1B's shape, ``8b`` Llama-3-8B's, both with the tiny models'
byte-level tokenizer (vocab 320, so the weights are the decoder's: 1.94 GB and 13.96 GB
in bf16). The model is built on ``device`` (a GPU makes the 8B one in seconds), cast
to ``dtype``, and written with the real ``save_pretrained``; load it back with
``from_pretrained`` to compare (an in-memory cast would also cast the rotary buffer).

    python -m lmjupyter.models.shapes OUT_DIR --shape 1.1b [--device cuda] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = {
    "1.1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632),
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336),
}


def build_shape(path, shape: str, *, device: str = "cpu", dtype: str = "bfloat16", max_positions: int = 4096,
                seed: int = 0, never_eos: bool = True) -> Path:
    """Build and save one shape; ``never_eos`` makes eos an id the model cannot emit, so that
    every request of a benchmark runs its whole budget."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmjupyter.models.tiny import _save, build_tokenizer

    dims = SHAPES[shape]
    path = Path(path)
    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
        num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
        num_key_value_heads=dims["kv_heads"], max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, initializer_range=0.02)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    out = _save(model, tokenizer, path)
    if never_eos:
        gen_path = out / "generation_config.json"
        gen = json.loads(gen_path.read_text())
        gen["eos_token_id"] = config.vocab_size + 7
        gen_path.write_text(json.dumps(gen))
    del model
    return out


def weight_bytes(model_dir) -> int:
    """Bytes of the decoder's weights as stored (what one decode step must read)."""
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                count = 1
                for n in piece.get_shape():
                    count *= n
                total += count * {"BF16": 2, "F16": 2, "F32": 4}[piece.get_dtype()]
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmjupyter.models.shapes", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.1b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    print(build_shape(args.out_dir, args.shape, device=args.device, dtype=args.dtype))


if __name__ == "__main__":
    main()
