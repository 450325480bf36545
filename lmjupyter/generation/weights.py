"""This rank's weights of a compact decoder, read straight from the model folder's safetensors.

Each tensor is read with ``safe_open(...).get_slice``, so a rank reads only its
layers (pipeline stage) and its rows or columns (tensor-parallel shard). The
projections that run on the same input are fused as they are read: q|k|v into
one matrix, and gate|up into one, so a block does two matmuls where Hugging Face
does five. Tensor parallelism follows Megatron: q/k/v and gate/up are split by
output rows (heads, intermediate units), o and down by input columns, with one
all-reduce after each; the embedding and the vocabulary projection are split by
vocabulary rows (padded to equal shards): a lookup is summed over the ranks, the
logits are gathered. A tied head is the embedding shard itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmjupyter.generation.spec import DecoderSpec
from lmjupyter.handlers.parallel.loading import Checkpoint


@dataclass
class LayerWeights:
    norm1: torch.Tensor
    qkv: torch.Tensor                 # [(q_l + 2 kv_l) * head_dim, hidden]
    o: torch.Tensor                   # [hidden, q_l * head_dim]
    norm2: torch.Tensor
    up: torch.Tensor                  # llama: gate|up [2 I_l, hidden]; gpt2: c_fc [I_l, hidden]
    down: torch.Tensor                # [hidden, I_l]
    norm1_bias: torch.Tensor | None = None
    norm2_bias: torch.Tensor | None = None
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None      # added once, after the all-reduce
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


@dataclass
class StageWeights:
    layers: list[LayerWeights]
    embed: torch.Tensor | None = None        # first stage: this tp rank's vocabulary rows [padded vocab / tp, hidden]
    positions: torch.Tensor | None = None    # GPT-2's wpe, first stage
    norm: torch.Tensor | None = None         # last stage
    norm_bias: torch.Tensor | None = None
    head: torch.Tensor | None = None         # last stage: [padded vocab / tp, hidden]

    def nbytes(self) -> int:
        tensors = [t for t in (self.embed, self.positions, self.norm, self.norm_bias, self.head) if t is not None]
        tensors += [t for layer in self.layers for t in vars(layer).values() if t is not None]
        seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
        return sum(seen.values())


class _Reader:
    """Tensors of one checkpoint by their Hugging Face names, cast and placed on the rank's device."""

    def __init__(self, model_dir, spec: DecoderSpec, device, dtype):
        self.ckpt = Checkpoint(model_dir)
        self.device, self.dtype = torch.device(device), dtype
        self.prefix = "model" if spec.llama_like else "transformer"

    def key(self, name: str) -> str:
        full = f"{self.prefix}.{name}"
        if full in self.ckpt:
            return full
        if name in self.ckpt:        # saved from the base model, without the prefix
            return name
        raise KeyError(f"checkpoint has no tensor {full!r}")

    def has(self, name: str) -> bool:
        try:
            self.key(name)
            return True
        except KeyError:
            return False

    def read(self, name: str, rows: slice | None = None, cols: slice | None = None, *, full_key: bool = False):
        key = name if full_key else self.key(name)
        part = self.ckpt.slice(key)
        ndim = len(part.get_shape())
        index = (rows or slice(None),) if ndim == 1 else (rows or slice(None), cols or slice(None))
        return self.place(part[index])

    def place(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype, copy=True).contiguous()


def _part(size: int, tp: int, index: int) -> slice:
    step = size // tp
    return slice(index * step, (index + 1) * step)


def load_stage_weights(model_dir, spec: DecoderSpec, layer_range: tuple[int, int], first: bool, last: bool,
                       tp: int, tp_index: int, device, dtype, progress=None) -> StageWeights:
    """Read this rank's part; ``progress(done, total)`` is called after each layer."""
    if tp > 1:
        spec.check_tp(tp)
    reader = _Reader(model_dir, spec, device, dtype)
    load_layer = _llama_layer if spec.llama_like else _gpt2_layer
    start, stop = layer_range
    layers = []
    for number, i in enumerate(range(start, stop), 1):
        layers.append(load_layer(reader, spec, i, tp, tp_index))
        if progress is not None:
            progress(number, stop - start)
    weights = StageWeights(layers)
    embed_name = "embed_tokens.weight" if spec.llama_like else "wte.weight"
    tied = "lm_head.weight" not in reader.ckpt
    rows, shard = vocab_rows(spec.vocab, tp, tp_index)
    if first or (last and tied):
        weights.embed = _padded(reader.read(embed_name, rows), shard)
    if first and not spec.llama_like:
        weights.positions = reader.read("wpe.weight")
    if last:
        norm = "norm" if spec.llama_like else "ln_f"
        weights.norm = reader.read(f"{norm}.weight")
        if not spec.llama_like:
            weights.norm_bias = reader.read(f"{norm}.bias")
        weights.head = weights.embed if tied else _padded(reader.read("lm_head.weight", rows, full_key=True), shard)
        if not first:
            weights.embed = None  # the last stage only needed the tied head's rows
    return weights


def vocab_rows(vocab: int, tp: int, tp_index: int) -> tuple[slice, int]:
    """This rank's rows of the embedding and of the head, and the shard size (all shards equal;
    the last is padded)."""
    shard = -(-vocab // tp)
    return slice(tp_index * shard, min((tp_index + 1) * shard, vocab)), shard


def _padded(part: torch.Tensor, shard: int) -> torch.Tensor:
    """A short last shard gets zero rows: never looked up, and their logits are cut off after the gather."""
    if part.shape[0] == shard:
        return part
    return torch.cat([part, part.new_zeros(shard - part.shape[0], part.shape[1])])


def _llama_layer(reader: _Reader, spec: DecoderSpec, i: int, tp: int, t: int) -> LayerWeights:
    p = f"layers.{i}."
    d = spec.head_dim
    q_rows, kv_rows = _part(spec.heads * d, tp, t), _part(spec.kv_heads * d, tp, t)
    names = ("q_proj", "k_proj", "v_proj")
    qkv = torch.cat([reader.read(p + f"self_attn.{n}.weight", r) for n, r in zip(names, (q_rows, kv_rows, kv_rows))])
    bias = None
    if spec.qkv_bias:
        bias = torch.cat([reader.read(p + f"self_attn.{n}.bias", r) for n, r in zip(names, (q_rows, kv_rows, kv_rows))])
    inter = _part(spec.intermediate, tp, t)
    return LayerWeights(
        norm1=reader.read(p + "input_layernorm.weight"), qkv=qkv, qkv_bias=bias,
        o=reader.read(p + "self_attn.o_proj.weight", None, q_rows),
        norm2=reader.read(p + "post_attention_layernorm.weight"),
        up=torch.cat([reader.read(p + "mlp.gate_proj.weight", inter), reader.read(p + "mlp.up_proj.weight", inter)]),
        down=reader.read(p + "mlp.down_proj.weight", None, inter))


def _gpt2_layer(reader: _Reader, spec: DecoderSpec, i: int, tp: int, t: int) -> LayerWeights:
    """GPT-2's Conv1D stores [in, out]: read columns for output splits, then transpose."""
    p = f"h.{i}."
    width = spec.hidden
    local = _part(width, tp, t)
    thirds = [slice(k * width + local.start, k * width + local.stop) for k in range(3)]
    qkv = torch.cat([reader.read(p + "attn.c_attn.weight", None, s).t() for s in thirds])
    qkv_bias = torch.cat([reader.read(p + "attn.c_attn.bias", s) for s in thirds])
    inter = _part(spec.intermediate, tp, t)
    return LayerWeights(
        norm1=reader.read(p + "ln_1.weight"), norm1_bias=reader.read(p + "ln_1.bias"),
        qkv=qkv.contiguous(), qkv_bias=qkv_bias,
        o=reader.read(p + "attn.c_proj.weight", local).t().contiguous(), o_bias=reader.read(p + "attn.c_proj.bias"),
        norm2=reader.read(p + "ln_2.weight"), norm2_bias=reader.read(p + "ln_2.bias"),
        up=reader.read(p + "mlp.c_fc.weight", None, inter).t().contiguous(), up_bias=reader.read(p + "mlp.c_fc.bias", inter),
        down=reader.read(p + "mlp.c_proj.weight", inter).t().contiguous(), down_bias=reader.read(p + "mlp.c_proj.bias"))
