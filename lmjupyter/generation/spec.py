"""The shape of a decoder, read from a Hugging Face config, for the families the compact decoder runs.

Llama-style models (``llama``; ``mistral`` without a sliding window; ``qwen2``, whose
q/k/v carry biases) share one block: RMSNorm, rotary attention with grouped kv
heads, SwiGLU. GPT-2 has LayerNorm, learned positions, fused biased q|k|v and a
tanh-GELU MLP. Anything else raises :class:`Unsupported` with the reason, and the
built-in handler then uses its Hugging Face per-batch path instead.
"""
from __future__ import annotations

from dataclasses import dataclass


class Unsupported(ValueError):
    """The compact decoder cannot run this model faithfully (the message says why)."""


LLAMA_LIKE = ("llama", "mistral", "qwen2")
FAMILIES = LLAMA_LIKE + ("gpt2",)


@dataclass(frozen=True)
class DecoderSpec:
    family: str            # "llama" (and llama-like) or "gpt2"
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float
    max_positions: int
    tie_embeddings: bool
    qkv_bias: bool = False
    attn_scale: float = 1.0
    scale_by_layer: bool = False   # GPT-2's scale_attn_by_inverse_layer_idx

    @property
    def llama_like(self) -> bool:
        return self.family != "gpt2"

    def check_tp(self, tp: int) -> None:
        for what, count in (("num_attention_heads", self.heads), ("num_key_value_heads", self.kv_heads),
                            ("intermediate_size", self.intermediate)):
            if count % tp:
                raise ValueError(f"tp={tp} must divide {what}={count}")


def spec_from_config(config) -> DecoderSpec:
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise Unsupported(f"model_type {kind!r} (the compact decoder runs {', '.join(FAMILIES)})")
    return _gpt2(config) if kind == "gpt2" else _llama(config, kind)


def _llama(config, kind: str) -> DecoderSpec:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise Unsupported(f"hidden_act {config.hidden_act!r} (expected silu)")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "llama3", "linear"):
        raise Unsupported(f"rope type {rope.get('rope_type')!r}: position-dependent scaling")
    if kind == "mistral" and getattr(config, "sliding_window", None):
        raise Unsupported("a sliding attention window")
    if kind == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise Unsupported("biases in attention or MLP")
    if getattr(config, "layer_types", None) and set(config.layer_types) != {"full_attention"}:
        raise Unsupported(f"layer types {sorted(set(config.layer_types))}")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return DecoderSpec(
        family="llama", vocab=config.vocab_size, hidden=config.hidden_size, layers=config.num_hidden_layers,
        heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate=config.intermediate_size, norm_eps=config.rms_norm_eps,
        max_positions=config.max_position_embeddings,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=kind == "qwen2", attn_scale=head_dim ** -0.5)


def _gpt2(config) -> DecoderSpec:
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise Unsupported(f"activation_function {config.activation_function!r}")
    if getattr(config, "reorder_and_upcast_attn", False):
        raise Unsupported("reorder_and_upcast_attn")
    head_dim = config.n_embd // config.n_head
    return DecoderSpec(
        family="gpt2", vocab=config.vocab_size, hidden=config.n_embd, layers=config.n_layer,
        heads=config.n_head, kv_heads=config.n_head, head_dim=head_dim,
        intermediate=config.n_inner or 4 * config.n_embd, norm_eps=config.layer_norm_epsilon,
        max_positions=config.n_positions, tie_embeddings=True, qkv_bias=True,
        attn_scale=head_dim ** -0.5 if config.scale_attn_weights else 1.0,
        scale_by_layer=bool(config.scale_attn_by_inverse_layer_idx))
