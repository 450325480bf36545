"""Tiny random-weight causal LMs saved exactly like real ones, for tests and demos.

There is no hub access on the test machines, so both the model and its
tokenizer are built locally: weights come from a seeded ``from_config`` and are
written with the real ``save_pretrained`` (safetensors); the tokenizer is a
byte-level BPE trained on a built-in text and saved with
``PreTrainedTokenizerFast.save_pretrained`` into the same folder. Loading the
folder with ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` therefore exercises the same code
paths as a downloaded checkpoint.

CLI: ``python -m lmjupyter.models.tiny OUT_DIR --family llama|gpt2 [--layers N]``
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
# A small chat template (saved in tokenizer_config.json) so that chat requests work on these models.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

_TEXT = """\
The quick brown fox jumps over the lazy dog. A model too large for one GPU is
split across ranks: pipeline stages hold slices of the decoder layers, tensor
parallel ranks hold slices of every matrix. Every rank receives the same batch,
and exactly one rank answers. Hello world! Jupyter notebooks drive the server;
requests wait in a queue, are batched, and routed to a worker. Once upon a time
there was a tiny language model that could only babble, yet it babbled the same
way on one process and on four. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?
"""


def build_tokenizer(path: str | os.PathLike, vocab_size: int = 320):
    """Train a byte-level BPE on the built-in text and save it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def _save(model, tokenizer, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_llama(
    path,
    num_layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab: int | None = None,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    init_std: float = 0.3,
) -> Path:
    """A Llama with grouped-query attention (``kv_heads < heads``) and random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=max(vocab or 0, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return _save(model, tokenizer, path)


def build_tiny_gpt2(
    path,
    num_layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    vocab: int | None = None,
    seed: int = 0,
    init_std: float = 0.3,
) -> Path:
    """A GPT-2 (Conv1D layers, fused qkv, tied embeddings) with random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(path)
    config = GPT2Config(
        vocab_size=max(vocab or 0, len(tokenizer)),
        n_embd=hidden,
        n_layer=num_layers,
        n_head=heads,
        n_positions=256,
        initializer_range=init_std,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    return _save(model, tokenizer, path)


# ``init_std`` is far above the usual 0.02: with tiny random weights the usual
# scale makes greedy decoding repeat one token, which would let a broken
# parallel path pass a token-equality test by accident.

BUILDERS = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmjupyter.models.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--family", choices=sorted(BUILDERS), default="llama")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2, help="llama only")
    parser.add_argument("--vocab", type=int, default=None, help="at least the tokenizer's size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = dict(num_layers=args.layers, hidden=args.hidden, heads=args.heads, vocab=args.vocab, seed=args.seed)
    if args.family == "llama":
        kwargs["kv_heads"] = args.kv_heads
    out = BUILDERS[args.family](args.out_dir, **kwargs)
    print(out)


if __name__ == "__main__":
    main()
