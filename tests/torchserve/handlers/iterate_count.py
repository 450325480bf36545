"""A handler for TorchServe's continuous batching, in TorchServe's own idiom (its
test_data/streaming/stream_handler.py): state per request id in ``context.cache``,
one result per request per call, ``context.stopping_criteria`` saying who is done.
Each call (5 ms, like a decode step) emits the next number of each request's count,
and the size of the batch it ran in, so that a test can see requests join and leave."""
import json
import logging
import time

from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)


class CountingHandler(BaseHandler):
    def initialize(self, ctx):
        ctx.cache = {}          # no weights to load: TorchServe's default initialize is not called
        self.initialized = True

    def preprocess(self, data):
        self._clean_cache()
        for req_id, req_data in zip(self.context.request_ids.values(), data):
            if req_id not in self.context.cache:
                body = req_data.get("data") or req_data.get("body")
                if isinstance(body, (bytes, bytearray)):
                    body = json.loads(body)
                self.context.cache[req_id] = {"left": int(body["count"]), "next": 0}
        return list(self.context.request_ids.values())

    def inference(self, req_ids):
        time.sleep(0.005)   # a decode step's worth of work
        out = []
        for req_id in req_ids:
            state = self.context.cache[req_id]
            out.append({"n": state["next"], "batch": len(req_ids)})
            state["next"] += 1
            state["left"] -= 1
        return out

    def postprocess(self, data):
        self.context.stopping_criteria = [self._stop(req_id) for req_id in self.context.request_ids.values()]
        return [json.dumps(d) + "\n" for d in data]

    def _stop(self, req_id):
        def stop(_result):
            done = self.context.cache[req_id]["left"] <= 0
            if done:
                del self.context.cache[req_id]
            return done
        return stop

    def _clean_cache(self):
        running = set(self.context.request_ids.values())
        for req_id in list(self.context.cache):
            if req_id not in running:
                del self.context.cache[req_id]
