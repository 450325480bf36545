"""Run a TorchServe-style handler inside an lmjupyter rank, as TorchServe's worker would.

:func:`adapt_handler` is called by the rank (``lmjupyter.worker.main``) on the handler
it loaded: a native handler comes back as it is, a TorchServe-style one (the rule is
in :func:`is_torchserve_style` and the package docstring) wrapped in
:class:`TorchServeHandler`. The wrapper gets each batch's raw requests
(``(payload, content_type, meta)``, meta holding the headers and request id the HTTP
layer saw) through :meth:`TorchServeHandler.run_batch` and returns encoded answers;
errors are answered as TorchServe's worker answers them (``PredictionException``:
its code; out of memory: 507; anything else: 503 "Prediction failed").
"""
from __future__ import annotations

import inspect
import sys
import time
import traceback

from lmjupyter.compat.torchserve import rows as codec
from lmjupyter.compat.torchserve.context import context_for

PREDICTION_METRIC = "PredictionTime"


def _entry_function(handler):
    """The module-level ``handle(data, context)`` that lmjupyter.worker.loader wrapped, or None."""
    from lmjupyter.worker.loader import _FunctionHandler

    return handler.function if isinstance(handler, _FunctionHandler) else None


def is_torchserve_style(handler, manifest: dict | None = None) -> bool:
    """From a TorchServe archive, TorchServe's BaseHandler subclass, a module-level ``handle(data, context)``,
    or a module importing ``ts``."""
    from lmjupyter.archive.manifest import FORMAT
    from lmjupyter.compat.torchserve.archive import IMPORTS_TS
    from lmjupyter.compat.torchserve.base_handler import BaseHandler as TorchServeBase

    if manifest and isinstance(manifest.get("model"), dict) and manifest.get("format") != FORMAT:
        return True  # MAR-INF/MANIFEST.json: a .mar (or torch-model-archiver's tgz/folder)
    if _entry_function(handler) is not None or isinstance(handler, TorchServeBase):
        return True
    module = sys.modules.get(type(handler).__module__)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return False
    return bool(IMPORTS_TS.search(source))


def adapt_handler(handler, handler_spec: str | None = None, manifest: dict | None = None):
    """The handler a rank serves: ``handler`` itself, or wrapped when it is TorchServe-style."""
    return TorchServeHandler(handler, handler_spec) if is_torchserve_style(handler, manifest) else handler


class TorchServeHandler:
    """TorchServe's rows and context in, TorchServe's answers out, around one handler."""

    def __init__(self, handler, handler_spec: str | None = None):
        self.handler = handler
        self.handler_spec = handler_spec
        self.context = None
        self.decode = codec.decode_inputs()
        self._function = _entry_function(handler)
        self._entry = self._function or handler.handle

    def initialize(self, ctx) -> None:
        self.context = context_for(ctx, self.handler_spec)
        if self._function is not None:
            self._function(None, self.context)  # TorchServe loads a module entry point this way
        else:
            self.handler.initialize(self.context)

    def output_rank(self, ctx) -> int:
        chooser = getattr(self.handler, "output_rank", None)
        if callable(chooser):
            return int(chooser(ctx))
        return ctx.world_size - 1 if ctx.parallel_type in ("pp", "pptp") else 0

    def drain_metrics(self) -> list:
        return self.context.metrics.drain() if self.context is not None else []

    def run_batch(self, items: list[tuple], send_partials) -> list[tuple]:
        """Encoded answers, one per item; ``send_partials`` (or None) streams already-encoded partials."""
        answers: list = [None] * len(items)
        rows, processors, ids, positions, bad = codec.request_rows(items, self.decode)
        for position, message in bad.items():
            answers[position] = codec.error_answer(400, message)
        if rows:
            streamer = self._streamer(positions, len(items), send_partials)
            for index, answer in enumerate(self._predict(rows, processors, ids, streamer)):
                answers[positions[index]] = answer
        return answers

    def run_iteration(self, items: list[tuple]) -> list[tuple[tuple, bool]]:
        """TorchServe's ``continuousBatching``: one call of the handler over the requests running now
        (new ones have just joined); each encoded answer with whether its request is done, as
        ``context.stopping_criteria[idx](result)`` says (no criteria, or None: done)."""
        answers: list = [None] * len(items)
        rows, processors, ids, positions, bad = codec.request_rows(items, self.decode)
        for position, message in bad.items():
            answers[position] = (codec.error_answer(400, message), True)
        if rows:
            self.context.stopping_criteria = None
            done: list[bool] = []
            for index, answer in enumerate(self._predict(rows, processors, ids, None, done)):
                answers[positions[index]] = (answer, done[index] if index < len(done) else True)
        return answers

    def _predict(self, rows, processors, ids, streamer, done: list | None = None) -> list[tuple]:
        """Encoded answers of one call of the handler; ``done`` (continuous batching) gets, per
        answer, whether the handler's stopping criteria say its request has ended."""
        from lmjupyter.compat.torchserve.util import PredictionException

        context = self.context
        context.request_ids, context.request_processor = ids, processors
        context.metrics.request_ids = ids
        context._stream = streamer
        started = time.time()
        try:
            results = self._entry(rows, context)
        except PredictionException as exc:
            traceback.print_exc()
            return [codec.error_answer(exc.error_code, exc.message)] * len(rows)
        except MemoryError:
            traceback.print_exc()
            return [codec.error_answer(507, "Out of resources")] * len(rows)
        except Exception as exc:  # noqa: BLE001 - TorchServe answers every request of the batch
            traceback.print_exc()
            text = f"{type(exc).__name__}: {exc}"
            status, message = (507, "Out of resources") if "CUDA" in str(exc) else (503, "Prediction failed")
            return [codec.error_answer(status, f"{message}: {text}", traceback.format_exc())] * len(rows)
        finally:
            context._stream = None
        if not isinstance(results, list):
            return [codec.error_answer(503, f"Invalid model predict output: {type(results).__name__}, "
                                            "expected a list with one answer per request")] * len(rows)
        if len(results) != len(rows):
            return [codec.error_answer(503, f"number of batch response mismatched: {len(results)} answers "
                                            f"for {len(rows)} requests")] * len(rows)
        context.metrics.add_time(PREDICTION_METRIC, round((time.time() - started) * 1000, 2))
        answers = []
        for index, value in enumerate(results):
            if done is not None:
                criteria = context.stopping_criteria
                stop = criteria[index](value) if criteria else None
                done.append(stop is None or bool(stop))
            if context.get_response_headers(index).get(codec.STREAM_NEXT) == "true":
                context.set_response_header(index, codec.STREAM_NEXT, "false")
            answers.append(codec.encode_answer(value, index, context))
        return answers

    def _streamer(self, positions: list[int], size: int, send_partials):
        """``send_intermediate_predict_response``: encode ``ret[idx]`` for each idx and stream it
        (``send_partials`` takes one encoded partial or None per request of the whole batch)."""
        context = self.context

        def stream(ret, req_id_map) -> None:
            if send_partials is None:
                return  # not the answering rank
            partials = [None] * size
            for idx in (req_id_map if req_id_map is not None else range(len(positions))):
                context.set_response_header(idx, codec.STREAM_NEXT, "true")
                partials[positions[idx]] = codec.encode_answer(ret[idx], idx, context)
            send_partials(partials)
        return stream
