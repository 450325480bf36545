"""The batcher's policy, in process with a stand-in worker: an idle worker takes a request at
once; under load, requests that arrive in the same event-loop turn share one batch."""
import asyncio

from lmjupyter.config import load_config
from lmjupyter.engine.metrics import EngineMetrics
from lmjupyter.engine.model import ServedModel
from lmjupyter.engine.states import ModelState, WorkerState


class StandInWorker:
    id = 1
    state = WorkerState.READY
    slots = 0  # a per-batch worker

    def __init__(self):
        self.batches = []

    def dispatch(self, batch, timeout):
        self.batches.append([request.payload for request in batch])


def served(**config):
    model = ServedModel("m", "1", load_config({"deviceType": "cpu", **config})[0], handler="h.py",
                        model_dir="/m", make_spec=None, gpu_plan={}, metrics=EngineMetrics().for_model("m"))
    model.state = ModelState.READY
    worker = StandInWorker()
    model.workers[1] = worker
    model._idle.append(worker)
    return model, worker


def test_idle_worker_takes_the_first_request_at_once_and_batches_form_under_load():
    async def scenario():
        model, worker = served(batchSize=8)
        model.submit(b"1", "application/json")
        assert worker.batches == [[b"1"]]                 # at once, in submit: no delay when idle
        for i in (2, 3, 4):                               # the worker is busy: they queue
            model.submit(str(i).encode(), "application/json")
        model._worker_free(worker)
        assert worker.batches[-1] == [b"2", b"3", b"4"]   # the next batch takes them all
        model._worker_free(worker)
        for i in (5, 6, 7):                               # under load, arriving in one loop turn
            model.submit(str(i).encode(), "application/json")
        assert len(worker.batches) == 2                   # not yet: the turn is not over
        await asyncio.sleep(0)
        assert worker.batches[-1] == [b"5", b"6", b"7"]   # one batch, not 1 + 2
    asyncio.run(scenario())


def test_no_turn_waiting_for_batch_size_1_or_job_tickets():
    async def scenario():
        model, worker = served(batchSize=8, useJobTicket=True)
        model._last_batch = 4                             # as if under load
        model.submit(b"a", "application/json")
        assert worker.batches == [[b"a"]]                 # job tickets: the worker is taken in submit

        model, worker = served(batchSize=1)
        for payload in (b"a", b"b", b"c"):                # a load of single-request batches
            model.submit(payload, "application/json")
        model._worker_free(worker)
        model._worker_free(worker)
        model._worker_free(worker)
        model.submit(b"d", "application/json")
        assert worker.batches == [[b"a"], [b"b"], [b"c"], [b"d"]]
    asyncio.run(scenario())
