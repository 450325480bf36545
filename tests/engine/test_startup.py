"""Start-up (issue 14): worker groups come from the fork server by default, report their phases in
order, leave nothing behind, and a handler edited between two deploys is the one that answers."""
import os
import signal
import time

import pytest

from lmjupyter.client import LMServeError
from serverproc import ServerProcess, alive, cpu_config, handler_path, rank_pids, running_server, wait_until

pytestmark = pytest.mark.timeout(300)

VERSIONED = '''
import os
import time
from lmjupyter.handlers import BaseHandler

class Versioned(BaseHandler):
    def initialize(self, ctx):
        import torch
        self.threads = torch.get_num_threads()
        for step in range(1, 4):
            time.sleep(0.06)  # more than the 50 ms by which repeats of one phase are thinned out
            ctx.report_progress("loading weights", step, 3)
        for step in range(1, 101):  # too fast to send each: the first and the last arrive
            ctx.report_progress("capturing graphs", step, 100)

    def inference(self, batch):
        return [{"version": VERSION, "pid": os.getpid(), "ppid": os.getppid(), "threads": self.threads}
                for _ in batch]
'''


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid and alive(int(entry)):
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def fork_server(client, timeout: float = 90) -> dict:
    """The health answer's launcher once the fork server has imported torch."""
    def ready():
        launcher = client.health()["launcher"]
        return launcher if launcher.get("state") == "ready" else None
    return wait_until(ready, timeout, interval=0.1, message="the fork server to be ready")


def write_handler(path, version: int) -> str:
    path.write_text(f"VERSION = {version}\n" + VERSIONED)
    return str(path)


def test_workers_fork_from_the_fork_server_and_an_edited_handler_answers(tmp_path):
    with running_server(str(tmp_path)) as server:
        client = server.client
        launcher = fork_server(client)
        assert launcher["kind"] == "fork-server" and "torch" in launcher["preloaded"]
        handler = write_handler(tmp_path / "versioned.py", 1)
        config = cpu_config(parallelType="tp", torchrun={"nproc-per-node": 2, "OMP_NUMBER_THREADS": 2})

        description = client.deploy("edit", handler, config=config, wait=True)
        first = client.predict("edit", {})
        assert first["version"] == 1 and first["threads"] == 2  # the rank's own OMP_NUMBER_THREADS
        agent = first["ppid"]                                     # ranks are forked by the agent...
        assert parent_of(agent) == launcher["pid"]                # ...which the fork server forked
        assert sorted(children_of(agent)) == sorted(rank_pids(description))

        events = client.events("edit")["events"]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        group = [(e["phase"], e["done"]) for e in events if e["rank"] is None]
        assert group[0] == ("starting ranks", 0) and group[-1] == ("ready", None)
        assert ("starting ranks", 2) in group
        for rank in (0, 1):
            phases = [e["phase"] for e in events if e["rank"] == rank]
            assert phases == ["joining process group", "importing handler", "initializing",
                              "loading weights", "loading weights", "loading weights",
                              "capturing graphs", "capturing graphs", "ready"], phases
            steps = [(e["phase"], e["done"], e["total"]) for e in events if e["rank"] == rank and e["done"]]
            assert steps == [("loading weights", 1, 3), ("loading weights", 2, 3), ("loading weights", 3, 3),
                             ("capturing graphs", 1, 100), ("capturing graphs", 100, 100)]
        times = [e["t"] for e in events]
        assert times == sorted(times)
        assert client.events("edit", after=seqs[-1])["events"] == []

        client.undeploy("edit")
        write_handler(tmp_path / "versioned.py", 2)   # edited between two deploys
        client.deploy("edit", handler, config=config, wait=True)
        second = client.predict("edit", {})
        assert second["version"] == 2 and second["pid"] not in rank_pids(description)
        assert parent_of(second["ppid"]) == launcher["pid"]
        assert client.health()["launcher"]["forked"] == 2
        client.undeploy("edit")


@pytest.mark.slow
def test_fifty_deploy_undeploy_cycles_of_a_two_rank_group(tmp_path):
    """No hang, no process left; each cycle under a bound that fails loudly."""
    with running_server(str(tmp_path)) as server:
        client = server.client
        launcher = fork_server(client)
        config = cpu_config(parallelType="tp", torchrun={"nproc-per-node": 2})
        slowest = 0.0
        for cycle in range(50):
            started = time.monotonic()
            description = client.deploy("cycle", handler_path("echo.py"), config=config, wait=True)
            answer = client.predict("cycle", {"cycle": cycle})
            assert answer["echo"] == {"cycle": cycle} and answer["world_size"] == 2
            pids = rank_pids(description)
            agent = parent_of(pids[0])
            client.undeploy("cycle")
            elapsed = time.monotonic() - started
            assert elapsed < 20, f"cycle {cycle} took {elapsed:.1f}s (deploy, predict, undeploy)"
            slowest = max(slowest, elapsed)
            assert not any(alive(p) for p in [agent, *pids]), f"cycle {cycle} left {[agent, *pids]}"
        assert children_of(launcher["pid"]) == []
        assert client.health()["launcher"]["forked"] == 50
        print(f"slowest cycle {slowest:.2f}s")


def test_a_failed_deploy_leaves_no_process_and_a_dead_server_takes_all_with_it(tmp_path):
    server = ServerProcess(str(tmp_path))
    try:
        client = server.client
        launcher = fork_server(client)
        with pytest.raises(LMServeError) as info:
            client.deploy("broken", handler_path("broken_init.py"),
                          config=cpu_config(torchrun={"nproc-per-node": 2}), wait=True)
        assert info.value.status == 500 and "checkpoint weights.pt not found" in info.value.message
        events = client.events("broken")["events"]
        assert events[-1]["phase"] == "failed" and events[-1]["rank"] is None
        assert any(e["phase"] == "failed" and e["rank"] is not None and "weights.pt" in e.get("message", "")
                   for e in events)
        wait_until(lambda: children_of(launcher["pid"]) == [], 10, message="the failed group's agent to end")
        client.undeploy("broken")

        description = client.deploy("orphans", handler_path("echo.py"),
                                    config=cpu_config(torchrun={"nproc-per-node": 2}), wait=True)
        pids = rank_pids(description)
        agents = children_of(launcher["pid"])
        assert len(agents) == 1
        server.proc.send_signal(signal.SIGKILL)  # no shutdown code runs: only parent-death signals
        server.proc.wait(10)
        everyone = [launcher["pid"], *agents, *pids]
        wait_until(lambda: not any(alive(p) for p in everyone), 15, message="fork server, agent and ranks to end")
    finally:
        server.stop()


GATED_IMPORT = """
import os
import time

deadline = time.monotonic() + 120  # a gate the test opens (bounded, should the test die first)
while not os.path.exists(os.path.join(os.environ["LMJ_TEST_GATES"], __name__)) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_deploy_waits_for_the_preload_under_way_not_for_the_rest(tmp_path):
    """The fork server imports ``--preload`` modules one at a time between launches: a worker asked
    for in a new server's first seconds starts from it without waiting for them all."""
    modules, gates = tmp_path / "modules", tmp_path / "gates"
    modules.mkdir()
    gates.mkdir()
    for name in ("gate_one", "gate_two"):
        (modules / f"{name}.py").write_text(GATED_IMPORT)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(modules), os.environ.get("PYTHONPATH")) if p),
           "LMJ_TEST_GATES": str(gates)}
    with running_server(str(tmp_path), "--preload", "gate_one,gate_two", env=env) as server:
        client = server.client
        launcher = fork_server(client)  # torch is imported; gate_one's import is under way
        assert launcher["preloading"] == ["gate_one", "gate_two"]
        client.deploy("early", handler_path("echo.py"), config=cpu_config(), wait=False)
        wait_until(lambda: client.events("early")["events"], 30, message="the deploy to start its ranks")
        time.sleep(1.0)  # the launch request is in the fork server's socket
        (gates / "gate_one").touch()
        wait_until(lambda: client.describe("early")["state"] == "ready", 60,
                   message="the worker, forked before gate_two was imported")
        launcher = client.health()["launcher"]
        assert launcher["preloading"] == ["gate_two"] and launcher["forked"] == 1
        assert "gate_one" in launcher["preloaded"] and "gate_two" not in launcher["preloaded"]
        assert client.predict("early", "hi")["echo"] == "hi"

        (gates / "gate_two").touch()
        wait_until(lambda: "gate_two" in client.health()["launcher"]["preloaded"], 60,
                   message="gate_two to be imported")
        assert client.health()["launcher"]["preloading"] == []
        client.deploy("late", handler_path("echo.py"), config=cpu_config(), wait=True)
        assert client.predict("late", "ho")["echo"] == "ho"
        assert client.health()["launcher"]["forked"] == 2
        client.undeploy("early")
        client.undeploy("late")


def test_without_the_fork_server_every_start_is_cold(tmp_path):
    with running_server(str(tmp_path), "--no-fork-server") as server:
        client = server.client
        assert client.health()["launcher"] == {"kind": "cold"}
        client.deploy("cold", handler_path("echo.py"), config=cpu_config(torchrun={"nproc-per-node": 2}), wait=True)
        phases = [e["phase"] for e in client.events("cold")["events"] if e["rank"] == 0]
        assert phases[:2] == ["importing torch", "joining process group"]   # a fresh interpreter per rank
        assert client.predict("cold", "hi")["echo"] == "hi"
        client.undeploy("cold")


def test_a_python_path_that_shadows_an_imported_module_is_refused(tmp_path):
    import yaml  # noqa: F401  (lmjupyter imports it, so the fork server has it)

    from lmjupyter.worker.forkserver import shadowed

    (tmp_path / "yaml").mkdir()                        # imported by lmjupyter: a clash
    (tmp_path / "fresh_module_xyz.py").write_text("")  # imported by nobody: fine
    (tmp_path / "yaml-6.0.dist-info").mkdir()
    assert shadowed([str(tmp_path)]) == [f"yaml (in {tmp_path})"]
    assert shadowed([str(tmp_path / "missing")]) == []
