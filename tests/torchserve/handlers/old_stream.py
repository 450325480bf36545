"""Streaming through the older import path, one partial per word, with the words numbered by metrics."""
from ts.metrics.dimension import Dimension
from ts.protocol.otf_message_handler import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


class Words(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        texts = [row.get("body") for row in data]
        for word in texts[0].split()[:-1]:
            send_intermediate_predict_response([word + " "] * len(texts), context.request_ids, "ok", 200, context)
        context.metrics.add_counter("WordsStreamed", len(texts[0].split()),
                                    dimensions=[Dimension("Kind", "word")])
        return [text.split()[-1] for text in texts]
