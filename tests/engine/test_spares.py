"""``lmjupyter serve --warm-spares N``: deploys take pre-started torchrun groups of their shape."""
import asyncio
import os
import types

import pytest

from lmjupyter.client import LMServeError
from lmjupyter.engine.spares import SparePool
from lmjupyter.engine.states import WorkerState
from lmjupyter.engine.worker_group import WorkerSpec
from serverproc import alive, cpu_config, handler_path, rank_pids, running_server, wait_until

pytestmark = pytest.mark.timeout(240)


def ready_spares(server, count=1, timeout=60):
    """The pool's spares once ``count`` of them have imported torch: [(torchrun pid, [rank pids])]."""
    def ready():
        spares = server.client.health()["warm_spares"]["spares"]
        if len(spares) == count and all(s["state"] == "ready" for s in spares):
            return [(s["torchrun_pid"], s["pids"]) for s in spares]
        return None
    return wait_until(ready, timeout, interval=0.1, message="warm spares to be ready")


def test_deploy_takes_the_spare_and_every_spare_process_ends_on_shutdown(tmp_path):
    with running_server(str(tmp_path), "--warm-spares", "1") as server:
        client = server.client
        [(agent, ranks)] = ready_spares(server)
        assert len(ranks) == 1 and alive(agent) and alive(ranks[0])

        description = client.deploy("warm", handler_path("echo.py"), config=cpu_config(), wait=True)
        assert rank_pids(description) == ranks            # the spare's rank now serves the model
        answer = client.predict("warm", {"x": 1})
        assert answer["echo"] == {"x": 1} and answer["pid"] == ranks[0]
        assert client.health()["warm_spares"]["taken"] == 1
        logs = " ".join(" ".join(entry["lines"]) for entry in client.logs("warm"))
        assert f"rank 0/1 ready (pid {ranks[0]}" in logs    # the rank logs into the model's folder now

        [(new_agent, new_ranks)] = ready_spares(server)   # a new spare replaces the one taken
        assert new_agent != agent and new_ranks != ranks

        client.undeploy("warm")
        wait_until(lambda: not alive(ranks[0]) and not alive(agent), 10, message="the taken group to end")
        assert alive(new_agent) and alive(new_ranks[0])   # undeploying a model leaves the spare
    spare_pids = [new_agent, *new_ranks]
    wait_until(lambda: not any(alive(p) for p in spare_pids), 10, message="the spare to end with the server")


def test_other_shapes_start_cold_then_get_their_own_spare(tmp_path):
    with running_server(str(tmp_path), "--warm-spares", "1") as server:
        client = server.client
        [(agent, ranks)] = ready_spares(server)
        config = cpu_config(parallelType="tp", torchrun={"nproc-per-node": 2})

        first = client.deploy("two", handler_path("echo.py"), config=config, wait=True)
        assert not set(rank_pids(first)) & set(ranks)     # 2 ranks: the 1-rank spare does not fit
        # the pool follows the latest shape: the 1-rank spare ends, a 2-rank one starts
        wait_until(lambda: not alive(agent) and not alive(ranks[0]), 15, message="the unwanted spare to end")
        [(agent2, ranks2)] = ready_spares(server)
        assert len(ranks2) == 2
        client.undeploy("two")

        second = client.deploy("two", handler_path("echo.py"), config=config, wait=True)
        assert sorted(rank_pids(second)) == sorted(ranks2)
        answer = client.predict("two", {"x": 2})
        assert answer["world_size"] == 2 and answer["echo"] == {"x": 2}
        client.undeploy("two")


def test_a_handler_that_fails_on_a_taken_spare_fails_the_deploy_and_ends_its_processes(tmp_path):
    with running_server(str(tmp_path), "--warm-spares", "1") as server:
        [(agent, ranks)] = ready_spares(server)
        with pytest.raises(LMServeError) as info:
            server.client.deploy("broken", handler_path("broken_init.py"), config=cpu_config(), wait=True)
        assert info.value.status == 500 and "checkpoint weights.pt not found" in info.value.message
        wait_until(lambda: not alive(agent) and not alive(ranks[0]), 10, message="the failed group to end")
        server.client.undeploy("broken")


def test_a_spare_is_taken_only_by_a_start_with_the_same_arguments_and_environment():
    def spec(**changes):
        base = dict(model_name="m", worker_id=1, handler="h.py", model_dir="/m", config={}, nproc=1, gpus=[0],
                    torchrun_args=["--standalone", "--nproc-per-node", "1"],
                    env={"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": "/p"},
                    run_dir="/r", log_dir="/l", startup_timeout=60)
        base.update(changes)
        return WorkerSpec(**base)

    async def check():
        pool = SparePool(2, "/r")
        live = types.SimpleNamespace(returncode=None)
        spare = types.SimpleNamespace(spec=spec(model_name="spare", handler="", log_dir="/s"),
                                      state=WorkerState.READY, process=live)
        pool.spares.append(spare)
        assert pool.take(spec(env={"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": "/p"})) is None
        assert pool.take(spec(env={"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2", "PYTHONPATH": "/p"})) is None
        assert pool.take(spec(env={"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": "/q:/p"})) is None
        assert pool.take(spec(torchrun_args=["--standalone", "--nproc-per-node", "2"])) is None
        spare.process = types.SimpleNamespace(returncode=-9)   # a dead spare is never handed out
        assert pool.take(spec(model_name="other", worker_id=7, handler="x.py")) is None
        spare.process = live
        assert pool.take(spec(model_name="other", worker_id=7, handler="x.py")) is spare
        assert pool.spares == [] and pool.taken == 1

    asyncio.run(check())
