"""``LMServe``: the engine mounted in a Jupyter server, its settings as traitlets.

Life cycle: ``initialize_settings`` builds one :class:`~lmjupyter.engine.engine.Engine`
rooted at the server's ``root_dir``; ``initialize_handlers`` mounts the shared
route table under ``<base_url>lmserve/``; once the server listens, the URL and a
token are exported to the environment that kernels inherit; ``stop_extension``
ends every worker group before the server exits.
"""
from __future__ import annotations

import os
import secrets

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, List, Unicode

from lmjupyter.archive.unpack import UnpackLimits
from lmjupyter.engine.engine import Engine, EngineSettings
from lmjupyter.gpus import discover_gpus
from lmjupyter.jupyter_server_ext import fast_predict
from lmjupyter.jupyter_server_ext.handlers import LMServeHandler, protect
from lmjupyter.server.api import route_table
from lmjupyter.server.limits import DEFAULT_MAX_BODY_SIZE

ENV_URL, ENV_TOKEN, ENV_SERVER_PID = "LMJUPYTER_URL", "LMJUPYTER_TOKEN", "LMJUPYTER_SERVER_PID"
_WILDCARDS = {"", "0.0.0.0", "*", "::", "localhost"}


class LMServe(ExtensionApp):
    """Serve models too large for one GPU from this Jupyter server (``c.LMServe.*``)."""

    name = "lmjupyter"
    description = "lmjupyter: torchrun worker groups behind Jupyter's REST API"
    load_other_extensions = True

    model_store = Unicode(None, allow_none=True, config=True, help=(
        "Folder of model archives and folders. Handlers and models may be read from it; "
        "default: none (only root_dir and allow_roots)."))
    gpus = List(Int(), default_value=None, allow_none=True, config=True, help=(
        "GPU ids this server may hand to workers. Default: $LMJUPYTER_GPUS, else what "
        "nvidia-smi lists. [] plans for a machine without GPUs."))
    allow_roots = List(Unicode(), config=True, help=(
        "More folders handlers and model directories may be read from, besides the "
        "server's root_dir and the model store."))
    install_requirements = Bool(False, config=True, help=(
        "pip-install the requirements file an archive lists, per model (never into this environment)."))
    fork_server = Bool(True, config=True, help=(
        "Start worker groups from the fork server: one process with torch imported that forks "
        "each group's torchrun agent, whose ranks are forked in turn (a deploy skips the "
        "interpreter start and torch import of every process; ~0.1 s instead of 1.4-2.3 s for "
        "an echo handler on 2 cores). False: every torchrun starts in a new interpreter."))
    preload = List(Unicode(), default_value=None, allow_none=True, config=True, help=(
        "Modules the fork server imports besides torch, so that handlers find them imported; one "
        "at a time between launches, after torch. Default (None): torch.distributed.pipelining and "
        "lmjupyter.worker.preload_hf, what the built-in handler uses; [] imports torch only. Never "
        "a handler's own module: a handler edited between two deploys must be the one that answers."))
    warm_spares = Int(0, config=True, help=(
        "Keep N torchrun groups started ahead (torch imported, ranks waiting for a model) for the "
        "next worker starts of the same shape; as `lmjupyter serve --warm-spares N`. With the "
        "fork server a start is already fast; spares also skip torchrun's rendezvous."))
    node_address = Unicode(None, allow_none=True, config=True, help=(
        "This host's address for `lmjupyter node` agents on other hosts (worker groups with "
        "torchrun.nnodes > 1): their ranks connect to it and torchrun's rendezvous runs on it. "
        "Default: the server's ip, or 127.0.0.1 when it listens on all addresses."))
    node_port = Int(0, config=True, help=(
        "TCP port on node_address that ranks on other hosts connect to (0: a free one)."))
    node_timeout = Float(10.0, config=True, help=(
        "Seconds without a heartbeat after which an agent counts as lost (its worker groups restart)."))
    max_body_size = Int(DEFAULT_MAX_BODY_SIZE, config=True, help=(
        "Largest request body (bytes) the lmserve routes take; a larger one is answered 413 "
        "without being read whole."))
    archive_max_size = Int(UnpackLimits.max_bytes, config=True, help=(
        "Most bytes one model archive may unpack to (zip and tar bombs stop there)."))
    archive_max_files = Int(UnpackLimits.max_members, config=True, help="Most members one model archive may have.")
    export_environment = Bool(True, config=True, help=(
        "Export LMJUPYTER_URL and LMJUPYTER_TOKEN to the environment kernels inherit, so "
        "that %lmserve and lmjupyter.discovery.connect() find this server."))

    engine: Engine | None = None
    _exported: dict[str, str | None] | None = None

    def initialize_settings(self) -> None:
        root_dir = os.path.realpath(os.path.expanduser(self.serverapp.root_dir))
        store = os.path.realpath(os.path.expanduser(self.model_store)) if self.model_store else None
        if store:
            os.makedirs(store, exist_ok=True)
        gpus = list(self.gpus) if self.gpus is not None else discover_gpus()
        self.engine = Engine(EngineSettings(
            root_dir=root_dir, model_store=store, gpus=gpus,
            allowed_roots=[os.path.realpath(os.path.expanduser(p)) for p in self.allow_roots],
            install_requirements=self.install_requirements, warm_spares=max(0, self.warm_spares),
            fork_server=self.fork_server, preload=None if self.preload is None else list(self.preload),
            node_address=self.node_address or ("127.0.0.1" if self.serverapp.ip in _WILDCARDS else self.serverapp.ip),
            node_port=self.node_port, node_timeout=self.node_timeout,
            archive_limits=UnpackLimits(max_bytes=self.archive_max_size, max_members=self.archive_max_files)))
        identity = self.serverapp.identity_provider
        # Password-only servers have no token a kernel could send: mint one these routes accept.
        self.kernel_token = None if identity.token or not identity.auth_enabled else secrets.token_urlsafe(32)
        self.settings.update(lmserve_engine=self.engine, lmserve_kernel_token=self.kernel_token,
                             lmserve_max_body_size=self.max_body_size)
        self.log.info("lmjupyter: routes at %slmserve/ (GPUs: %s, roots: %s)",
                      self.serverapp.base_url, gpus or "none", ", ".join(self.engine.allowed_roots))

    def initialize_handlers(self) -> None:
        # ExtensionApp joins each pattern with the server's base_url; TorchServe's paths go under lmserve/.
        self.handlers.extend(route_table("/", LMServeHandler, wrap=protect, torchserve_prefix="lmserve/"))
        # Plain predict calls with the server's token skip the handlers (fast_predict.py says when).
        fast_predict.install(self.serverapp, self.engine, self.kernel_token)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        """Once the server listens: its port is known (kernels start after this), the loop runs."""
        if self.export_environment:
            self.export_env()
        self.engine.start_launcher()  # the fork server imports torch now, before the first deploy
        self.engine.start_spares()
        self.engine.restore()  # models of the model store's registry snapshot come back

    def server_url(self) -> str:
        app = self.serverapp
        if app.sock:
            raise RuntimeError("the server listens on a unix socket; kernels cannot reach it over HTTP")
        host = "127.0.0.1" if app.ip in _WILDCARDS else app.ip
        host = "[::1]" if app.ip == "::" else (f"[{host}]" if ":" in host else host)
        scheme = "https" if app.certfile else "http"
        return f"{scheme}://{host}:{app.port}{app.base_url}"

    def kernel_credentials(self) -> tuple[str, str]:
        """(URL, token) a process on this machine uses to call the routes."""
        return self.server_url(), self.serverapp.identity_provider.token or self.kernel_token or ""

    def export_env(self) -> None:
        try:
            url, token = self.kernel_credentials()
        except RuntimeError as exc:
            self.log.warning("lmjupyter: not exporting %s: %s", ENV_URL, exc)
            return
        values = {ENV_URL: url, ENV_TOKEN: token, ENV_SERVER_PID: str(os.getpid())}
        self._exported = {key: os.environ.get(key) for key in values}
        os.environ.update(values)

    def _restore_env(self) -> None:
        for key, previous in (self._exported or {}).items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous
        self._exported = None

    async def stop_extension(self) -> None:
        """Server shutdown: every worker group of every model ends before the server exits."""
        self._restore_env()
        if self.engine is not None:
            count = len(self.engine.models())
            await self.engine.shutdown()
            self.log.info("lmjupyter: stopped %d model(s)", count)
