"""The tiny models the parallel and GPU tests share, built with the real save_pretrained."""
from __future__ import annotations


def build_model_set(root) -> dict[str, str]:
    """Odd layer counts (uneven pipeline splits); GPT-2's vocab is odd (uneven tp shards);
    one Llama ties its head to the embedding, as Llama 3.2 does."""
    from lmjupyter.models.tiny import build_tiny_gpt2, build_tiny_llama

    return {
        "llama": str(build_tiny_llama(root / "llama", num_layers=3, hidden=64, heads=4, kv_heads=2)),
        "gpt2": str(build_tiny_gpt2(root / "gpt2", num_layers=3, hidden=64, heads=4, vocab=321)),
        "llama_tied": str(build_tiny_llama(root / "llama_tied", num_layers=5, hidden=32, heads=4, kv_heads=2,
                                           tie_word_embeddings=True, seed=1)),
    }
