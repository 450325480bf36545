"""Built-in handler for a Hugging Face causal LM folder: no handler code needed.

Deploy a ``model_dir`` holding ``config.json``, safetensors weights and a
tokenizer; the engine uses ``lmjupyter.handlers.causal_lm:CausalLMHandler``.
``parallelType`` picks how the ranks share the model: absent (one process),
``tp`` (every matrix sharded), ``pp`` (decoder layers split into stages) or
``pptp`` (both, tp degree from ``handler.tp_size``, default 2). Each rank reads
only its part of the checkpoint.

**Continuous batching** (the default for Llama-style models and GPT-2): the
worker holds up to ``batchSize`` sequences in a slot KV cache and runs the
compact decoder of :mod:`lmjupyter.generation`; requests join and leave the
running batch at every step (see that package). ``continuousBatching: false``,
a ``deepspeed:`` section, or another model family use the **per-batch** path
instead: Hugging Face's modelling code, each batch generated to completion
(:mod:`lmjupyter.handlers.parallel`).

Request and answer: :mod:`lmjupyter.generation.params` (``prompt``, ``input_ids``
or ``messages``; ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
``seed``, ``stop``, ``logprobs``, ``ignore_eos``). The per-batch path takes the
prompt, ``max_new_tokens`` and ``temperature`` only, and refuses the rest (400).

``handler:`` keys: ``max_new_tokens`` (default 32), ``max_length`` (prompts
longer than this keep their last ``max_length`` tokens), ``tp_size`` (pptp),
``dtype`` (default float32 on CPU, bfloat16 on GPU); continuous batching:
``max_seq_len``, ``prefill_chunk``, ``cuda_graphs``, ``compile``, ``kernels`` (:mod:`lmjupyter.generation.group`);
per-batch: ``cuda_graphs``, ``cuda_graph_max_batch``, ``static_cache``.
"""
from __future__ import annotations

import logging

from lmjupyter.handlers.base import BaseHandler, RequestError

log = logging.getLogger(__name__)
DEFAULT_MAX_NEW_TOKENS = 32
PER_BATCH_OPTIONS = {"max_new_tokens", "temperature"}


class CausalLMHandler(BaseHandler):
    generation = None   # lmjupyter.generation.group.Generation when the worker batches continuously

    def initialize(self, ctx) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        hcfg = ctx.handler_config
        self.rank = ctx.rank
        self.device = torch.device(ctx.device)
        self.max_new_tokens = int(hcfg.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.max_length = hcfg.get("max_length")
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, local_files_only=True)
        self.config = AutoConfig.from_pretrained(ctx.model_dir, local_files_only=True)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.pad_id, self.eos_ids = self._special_ids(ctx.model_dir)
        spec, self.per_batch_reason = self._continuous_spec(ctx)
        if spec is not None:
            self._start_continuous(ctx, spec)
        else:
            from lmjupyter.handlers.parallel import build_runner

            print(f"per-batch generation: {self.per_batch_reason}", flush=True)
            self.runner = build_runner(ctx, self.config)
            self.decider = self.runner.decider_rank
        self.initialized = True

    def _continuous_spec(self, ctx):
        """The decoder spec for continuous batching, or (None, why this worker runs per batch)."""
        from lmjupyter.generation.spec import Unsupported, spec_from_config

        if ctx.model_yaml_config.get("continuousBatching") is False:
            return None, "continuousBatching is false"
        if ctx.model_yaml_config.get("deepspeed"):
            return None, "a deepspeed: section runs DeepSpeed-Inference"
        try:
            return spec_from_config(self.config), None
        except Unsupported as exc:
            return None, f"the compact decoder does not run this model: {exc}"

    def _start_continuous(self, ctx, spec) -> None:
        from lmjupyter.generation.group import build_generation
        from lmjupyter.handlers.parallel import _flag, grid
        from lmjupyter.handlers.parallel.sharded import as_dtype

        pp, tp = grid(ctx)
        cuda = self.device.type == "cuda"
        graphs = cuda and _flag(ctx.handler_config, "cuda_graphs", pp * tp == 1)
        self.generation = build_generation(
            ctx, self.config, spec, self.tokenizer, self.eos_ids, pp=pp, tp=tp,
            dtype=as_dtype(ctx.handler_config.get("dtype"), ctx.device),
            default_max_new_tokens=self.max_new_tokens, max_length=self.max_length, graphs=graphs,
            compile=_flag(ctx.handler_config, "compile", False),
            kernels=ctx.handler_config.get("kernels", "auto"))
        self.decider = self.generation.executor.place.decider

    def output_rank(self, ctx) -> int:
        """The rank holding the logits (every rank ends up with the same tokens)."""
        return self.decider

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

    # ---- the per-batch path ----------------------------------------------------------------
    def _request(self, item):
        from lmjupyter.generation.params import parse_request
        from lmjupyter.handlers.parallel.generation import Request

        if isinstance(item, dict):
            extra = sorted(k for k in item if k not in PER_BATCH_OPTIONS and k not in ("prompt", "input_ids", "messages")
                           and item[k] is not None)
            if extra:
                raise RequestError(f"{extra[0]} needs continuous batching, and this worker generates per batch "
                                   f"({self.per_batch_reason})", param=extra[0])
        parsed = parse_request(item, self.tokenizer, default_max_new_tokens=self.max_new_tokens,
                               max_length=self.max_length)
        ids, max_new = parsed.prompt_ids, parsed.params.max_new_tokens
        if self.max_positions and len(ids) >= self.max_positions:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model's limit is {self.max_positions - 1} "
                               f"prompt tokens (max_position_embeddings {self.max_positions})", param="prompt")
        if self.max_positions:
            max_new = max(0, min(max_new, self.max_positions - len(ids)))
        return Request(ids, max_new, parsed.params.temperature)

    def handle(self, requests, ctx):
        """Bad requests answer 400 alone; the others are generated together."""
        parsed, good = [], []
        for item in requests:
            try:
                parsed.append(self._request(item))
                good.append(len(parsed) - 1)
            except RequestError as exc:
                parsed.append(exc)
        batch = [parsed[i] for i in good]
        answers = self._drain(self.inference(batch), ctx, good, len(parsed)) if batch else []
        for i, answer in zip(good, answers):
            parsed[i] = answer
        return parsed

    def _drain(self, stream, ctx, good: list[int], total: int):
        while True:
            try:
                partial = next(stream)
            except StopIteration as stop:
                return stop.value
            full = [None] * total
            for i, p in zip(good, partial):
                full[i] = p
            ctx.send_intermediate(full)

    def inference(self, batch):
        """A generator: one partial per request per step; returns the answers."""
        from lmjupyter.handlers.parallel.generation import generate

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
        return [{"text": self.tokenizer.decode(out, skip_special_tokens=True), "token_ids": out,
                 "finish_reason": "stop" if out and out[-1] in self.eos_ids else "length",
                 "prompt_tokens": len(request.prompt_ids), "completion_tokens": len(out)}
                for out, request in zip(ids, batch)]
