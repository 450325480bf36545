"""``lmjupyter node``: run this host's share of worker groups for a server on another host.

    lmjupyter node --server http://hostA:8765 --token T      # by hand, inside srun, or as a pod

The agent registers (name, hostname, address, GPUs), then long-polls the server for
commands; each poll is also its heartbeat. ``start`` runs one node's torchrun of a
worker group (``python -m lmjupyter.worker.launch <torchrun args> -m lmjupyter.worker.main
SPEC``), whose ranks connect to the server's rank port over TCP with the start's secret;
``stop`` ends it. The agent mirrors its ranks' log files to the server and reports each
torchrun's exit code once every rank of it has gone.

No orphans: torchrun is started with a parent-death signal (worker/launch.py) and every
rank watches torchrun the same way, so ``kill -9`` of the agent ends its ranks. When the
server cannot be reached for its heartbeat timeout, or has forgotten this agent (it was
restarted, or declared this agent lost), the agent ends every share and registers
again, retrying until the server is back. SIGTERM/SIGINT end the shares and deregister.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import lmjupyter
from lmjupyter.nodes import netif
from lmjupyter.procs import pid_alive

LOG_CHUNK = 64 << 10
TAIL_INTERVAL = 0.3


class AgentError(RuntimeError):
    """The agent cannot go on (wrong token, bad arguments); the message says why."""


class _Share:
    """One torchrun of a worker group on this host."""

    def __init__(self, agent: "Agent", command: dict):
        self.agent = agent
        self.id = str(command["share"])
        self.dir = os.path.join(agent.work_dir, self.id)
        os.makedirs(self.dir, mode=0o700)
        spec = dict(command["spec"], log_dir=self.dir)
        spec_file = os.path.join(self.dir, "spec.json")
        with open(os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(spec, f)
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (command.get("env") or {}).items()})
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(lmjupyter.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, *(command.get("python_path") or []),
                                                         os.environ.get("PYTHONPATH", "")] if p)
        env.update(netif.socket_env(agent.address, env))
        env["PYTHONUNBUFFERED"] = "1"
        for key in ("LMJUPYTER_TOKEN", "TORCHELASTIC_RUN_ID"):  # no secret in the handlers' reach
            env.pop(key, None)
        args = [sys.executable, "-m", "lmjupyter.worker.launch", *map(str, command["args"]),
                "-m", "lmjupyter.worker.main", spec_file]
        self.offsets: dict[str, int] = {}
        self.lock = threading.Lock()
        with open(os.path.join(self.dir, "agent.log"), "ab") as log:
            self.proc = subprocess.Popen(args, env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.ranks: set[int] = set()
        self.stopping = False
        agent.event({"share": self.id, "kind": "started", "pid": self.proc.pid})
        threading.Thread(target=self._watch, name=f"share-{self.id}", daemon=True).start()

    def _watch(self) -> None:
        """Wait for torchrun, noting its ranks on the way; report the exit once they are gone too."""
        while True:
            self.ranks |= children_of(self.proc.pid)  # a /proc scan a second: cheap, and ranks live long
            try:
                self.proc.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in self.ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.ranks:  # a rank that outlived torchrun's end by 10 s
            kill(pid)
        self.tail()
        self.agent.event({"share": self.id, "kind": "exited", "code": self.proc.returncode})
        self.agent.share_ended(self)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM to torchrun (it stops its ranks), SIGKILL after ``grace``; the ranks die with it."""
        self.stopping = True
        if self.proc.poll() is None:
            self.ranks |= children_of(self.proc.pid)
            kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                kill(-self.proc.pid)
                kill(self.proc.pid)
        for pid in self.ranks:
            kill(pid)

    def tail(self) -> None:
        """Send what the logs gained since the last call."""
        with self.lock:
            try:
                names = sorted(n for n in os.listdir(self.dir) if n.endswith(".log"))
            except OSError:
                return
            for name in names:
                path = os.path.join(self.dir, name)
                offset = self.offsets.get(name, 0)
                try:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        data = f.read(LOG_CHUNK)
                except OSError:
                    continue
                if data:
                    self.offsets[name] = offset + len(data)
                    self.agent.event({"share": self.id, "kind": "log", "file": name,
                                      "text": data.decode("utf-8", "replace")})


class Agent:
    def __init__(self, server: str, token: str, *, name: str, address: str | None, gpus: list[int],
                 work_dir: str | None = None, say=print):
        import requests

        self.server = server.rstrip("/") + "/"
        self.token = token
        self.name = name
        self.address = address or netif.address_towards(urllib.parse.urlsplit(self.server).hostname or "127.0.0.1")
        self.gpus = gpus
        self.instance = uuid.uuid4().hex
        self.say = say
        self.own_work_dir = work_dir is None
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="lmj-node-")
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        self.session: str | None = None
        self._complained: str | None = None
        self.timeout = 10.0
        self.poll_wait = 2.0
        self.shares: dict[str, _Share] = {}
        self._lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"token {token}"
        self._events_http = requests.Session()
        self._events_http.headers["Authorization"] = f"token {token}"

    # ---- the main loop --------------------------------------------------------------------------
    def run(self) -> int:
        threading.Thread(target=self._send_events, name="events", daemon=True).start()
        threading.Thread(target=self._tail_logs, name="logs", daemon=True).start()
        try:
            while not self._stop.is_set():
                if not self._register():
                    continue
                self._serve()
                self.stop_shares()
        finally:
            self.stop_shares()
            self._leave()
            if self.own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        return 0

    def stop(self, *_ignored) -> None:
        self._stop.set()

    def _register(self) -> bool:
        """True once registered; False after a wait when the server cannot take us now."""
        import requests

        body = {"name": self.name, "hostname": socket.gethostname(), "address": self.address, "gpus": self.gpus,
                "pid": os.getpid(), "version": lmjupyter.__version__, "instance": self.instance}
        try:
            response = self._http.post(self.server + "lmserve/api/nodes", json=body,
                                       timeout=max(2.0, min(10.0, self.timeout)))
        except requests.RequestException as exc:
            self._unreachable(f"cannot reach {self.server}: {exc}")
            return False
        if response.status_code == 401:
            raise AgentError(f"{self.server} refused the token (HTTP 401); pass the server's token with --token")
        if response.status_code != 201:
            self._unreachable(f"{self.server} refused to register node {self.name!r}: {_error(response)}")
            return False
        answer = response.json()
        self.session, self.timeout, self.poll_wait = answer["session"], answer["timeout"], answer["poll_wait"]
        self._complained = None
        self.say(f"lmjupyter node {self.name} registered with {self.server}: address {answer['address']}, "
                 f"GPUs {self.gpus or 'none'}", flush=True)
        return True

    def _unreachable(self, message: str) -> None:
        if getattr(self, "_complained", None) != message:
            self.say(f"lmjupyter node {self.name}: {message}; retrying", flush=True)
            self._complained = message
        self._stop.wait(1.0)

    def _serve(self) -> None:
        """Poll for commands until the server forgets us or stays out of reach past its timeout."""
        import requests

        last_contact = time.monotonic()
        while not self._stop.is_set():
            try:
                response = self._http.post(self.server + f"lmserve/api/nodes/{self.name}/commands",
                                           json={"session": self.session, "wait": self.poll_wait},
                                           timeout=self.poll_wait + self.timeout)
            except requests.RequestException as exc:
                if _refused(exc):  # the server's host answers and nothing listens: the server is gone
                    self.say(f"lmjupyter node {self.name}: the server is gone (connection refused); "
                             "ending this host's ranks", flush=True)
                    return
                if time.monotonic() - last_contact > self.timeout:
                    self.say(f"lmjupyter node {self.name}: no contact with the server for {self.timeout:g}s "
                             f"({exc}); ending this host's ranks", flush=True)
                    return
                self._stop.wait(0.5)
                continue
            if response.status_code in (401, 404):
                self.say(f"lmjupyter node {self.name}: the server ended this registration "
                         f"({_error(response)}); ending this host's ranks", flush=True)
                return
            if response.status_code != 200:
                self._stop.wait(0.5)
                continue
            last_contact = time.monotonic()
            for command in response.json().get("commands", []):
                self._do(command)

    def _do(self, command: dict) -> None:
        op, share_id = command.get("op"), str(command.get("share"))
        if op == "start":
            try:
                share = _Share(self, command)
            except Exception as exc:  # the server hears why at once, instead of waiting for startupTimeout
                self.event({"share": share_id, "kind": "exited", "code": None,
                            "error": f"could not be started: {type(exc).__name__}: {exc}"})
                return
            with self._lock:
                self.shares[share.id] = share
        elif op == "stop":
            with self._lock:
                share = self.shares.get(share_id)
            if share is not None:
                threading.Thread(target=share.stop, daemon=True).start()
            else:  # already gone: say so, so that the server need not wait
                self.event({"share": share_id, "kind": "exited", "code": None})

    # ---- shares ----------------------------------------------------------------------------------
    def share_ended(self, share: _Share) -> None:
        with self._lock:
            self.shares.pop(share.id, None)
        shutil.rmtree(share.dir, ignore_errors=True)

    def stop_shares(self) -> None:
        with self._lock:
            shares = list(self.shares.values())
        for share in shares:
            share.stop()
        deadline = time.monotonic() + 15
        while self.shares and time.monotonic() < deadline:
            time.sleep(0.05)

    def _tail_logs(self) -> None:
        while not self._stop.wait(TAIL_INTERVAL):
            with self._lock:
                shares = list(self.shares.values())
            for share in shares:
                share.tail()

    # ---- events to the server ------------------------------------------------------------------
    def event(self, event: dict) -> None:
        self._events.put(event)

    def _send_events(self) -> None:
        import requests

        while True:
            batch = [self._events.get()]
            while not self._events.empty() and len(batch) < 200:
                batch.append(self._events.get_nowait())
            for _ in range(3):
                try:
                    self._events_http.post(self.server + f"lmserve/api/nodes/{self.name}/events",
                                           json={"session": self.session, "events": batch}, timeout=10)
                    break
                except requests.RequestException:
                    time.sleep(0.5)
            for _ in batch:
                self._events.task_done()

    def _leave(self) -> None:
        """Deregister, after the last events went out (bounded)."""
        import requests

        deadline = time.monotonic() + 5
        while self._events.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.session:
            try:
                self._http.delete(self.server + f"lmserve/api/nodes/{self.name}",
                                  params={"session": self.session}, timeout=5)
            except requests.RequestException:
                pass


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (torchrun's ranks run in sessions of their own)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _refused(exc: BaseException) -> bool:
    """Whether a requests error was, deep down, a refused TCP connection."""
    seen, todo = set(), [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        todo += [error.__cause__, error.__context__, getattr(error, "reason", None),
                 *(a for a in getattr(error, "args", ()) if isinstance(a, BaseException))]
    return False


def _error(response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="the server's URL, e.g. http://hostA:8765 "
                        "(the base URL of a Jupyter server works too)")
    parser.add_argument("--token", default=None, help="the server's token (default: $LMJUPYTER_TOKEN)")
    parser.add_argument("--name", default=None, help="this node's name (default: the hostname); unique per server")
    parser.add_argument("--address", default=None,
                        help="this host's address that the server and the other nodes reach "
                             "(default: the one on the route to the server)")
    parser.add_argument("--gpus", default=None,
                        help="comma-separated GPU ids this node may use (default: $LMJUPYTER_GPUS, else nvidia-smi)")
    parser.add_argument("--work-dir", default=None, help="folder for the ranks' spec files and logs "
                        "(default: a private temporary folder, removed at exit)")


def main(args) -> int:
    from lmjupyter.gpus import discover_gpus

    token = args.token or os.environ.get("LMJUPYTER_TOKEN")
    if not token:
        print("lmjupyter node: give the server's token with --token or LMJUPYTER_TOKEN", file=sys.stderr)
        return 2
    try:
        gpus = discover_gpus(args.gpus)
    except ValueError as exc:
        print(f"lmjupyter node: --gpus: {exc}", file=sys.stderr)
        return 2
    try:
        agent = Agent(args.server, token, name=args.name or socket.gethostname(), address=args.address,
                      gpus=gpus, work_dir=args.work_dir)
    except OSError as exc:  # the server's host does not resolve, or no route to it
        print(f"lmjupyter node: cannot find this host's address towards {args.server}: {exc}; "
              "pass --address", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    try:
        return agent.run()
    except AgentError as exc:
        print(f"lmjupyter node: {exc}", file=sys.stderr)
        return 2
