"""Built-in handler for a Hugging Face causal LM folder: no handler code needed.

Deploy a ``model_dir`` holding ``config.json``, safetensors weights and a
tokenizer; the engine uses ``lmjupyter.handlers.causal_lm:CausalLMHandler``.
``parallelType`` picks how the ranks share the model: absent (one process,
``from_pretrained``), ``tp`` (every matrix sharded), ``pp`` (decoder layers
split into stages, ``pippy.chunks`` microbatches) or ``pptp`` (both, tp degree
from ``handler.tp_size``, default 2). A ``deepspeed:`` section uses
DeepSpeed-Inference instead. In tp/pp/pptp each rank reads only its part of
the checkpoint.

Request: ``{"prompt": str, "max_new_tokens": int, "temperature": float}``, or
``{"input_ids": [...]}`` instead of a prompt, or a bare string. Answer:
``{"text": str, "token_ids": [generated ids]}``. Streaming yields, per step,
``{"token_id": id, "text": piece}`` per request (None once it finished).

``handler:`` keys: ``max_new_tokens`` (default 32), ``max_length`` (prompts
longer than this keep their last ``max_length`` tokens), ``tp_size`` (pptp),
``dtype`` (default float32 on CPU, bfloat16 on GPU), ``cuda_graphs`` (one
process on a GPU: static KV cache plus a CUDA graph per decode shape; default
true, ``false`` for the eager loop), ``cuda_graph_max_batch`` (default 64;
larger batches decode eagerly), ``static_cache`` (the static-cache loop
without graphs, on CPU too; default false).
"""
from __future__ import annotations

from lmjupyter.handlers.base import BaseHandler
from lmjupyter.handlers.parallel.generation import Request, generate

DEFAULT_MAX_NEW_TOKENS = 32


class CausalLMHandler(BaseHandler):
    def initialize(self, ctx) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from lmjupyter.handlers.parallel import build_runner

        hcfg = ctx.handler_config
        self.rank = ctx.rank
        self.device = torch.device(ctx.device)
        self.max_new_tokens = int(hcfg.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.max_length = hcfg.get("max_length")
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, local_files_only=True)
        self.config = AutoConfig.from_pretrained(ctx.model_dir, local_files_only=True)
        self.runner = build_runner(ctx, self.config)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.pad_id, self.eos_ids = self._special_ids(ctx.model_dir)
        self.initialized = True

    def output_rank(self, ctx) -> int:
        """The rank holding the logits (every rank ends up with the same tokens)."""
        return self.runner.decider_rank

    def _special_ids(self, model_dir):
        """eos/pad as ``generate`` would take them: generation_config.json first."""
        from transformers import GenerationConfig

        try:
            gen = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
        except OSError:
            gen = GenerationConfig.from_model_config(self.config)
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        if pad is None:
            pad = min(eos_ids) if eos_ids else 0
        return int(pad), eos_ids

    # ---- requests ------------------------------------------------------------
    def _request(self, item) -> Request:
        if isinstance(item, (bytes, bytearray)):
            item = item.decode("utf-8")
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise ValueError(f"a request must be a string or an object, got {type(item).__name__}")
        if "input_ids" in item:
            ids = [int(t) for t in item["input_ids"]]
        elif isinstance(item.get("prompt"), str):
            ids = self.tokenizer(item["prompt"], add_special_tokens=True)["input_ids"]
        else:
            raise ValueError('a request needs "prompt" (a string) or "input_ids" (a list of ints)')
        if not ids:
            raise ValueError("the prompt is empty: nothing to continue")
        if self.max_length:
            ids = ids[-int(self.max_length):]
        max_new = int(item.get("max_new_tokens", self.max_new_tokens))
        if self.max_positions:
            max_new = max(0, min(max_new, self.max_positions - len(ids)))
        return Request(ids, max_new, float(item.get("temperature", 0.0) or 0.0))

    def preprocess(self, requests):
        return [self._request(item) for item in requests]

    def inference(self, batch: list[Request]):
        """A generator: one partial per request per step; returns the answers."""
        stream = generate(self.runner, batch, self.pad_id, self.eos_ids, self.rank, self.device)
        texts = [""] * len(batch)
        ids: list[list[int]] = [[] for _ in batch]
        while True:
            try:
                tokens, finished = next(stream)
            except StopIteration:
                break
            partial = []
            for i, tok in enumerate(tokens):
                if tok is None:
                    partial.append(None)
                    continue
                ids[i].append(tok)
                text = self.tokenizer.decode(ids[i], skip_special_tokens=True)
                # hold back a tail that may be the start of a multi-byte character,
                # unless this is the request's last token
                piece = "" if text.endswith("\ufffd") and not finished[i] else text[len(texts[i]):]
                texts[i] += piece
                partial.append({"token_id": tok, "text": piece})
            yield partial
        return [
            {"text": self.tokenizer.decode(out, skip_special_tokens=True), "token_ids": out}
            for out in ids
        ]
