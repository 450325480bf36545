"""The ``ctx`` object a handler receives: TorchServe's context, plus the rank's place."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Context:
    """What a handler knows about its model and its rank.

    Field names follow TorchServe's ``Context`` so that its handlers carry over:
    ``model_yaml_config`` is the parsed model-config.yaml (a dict, camelCase
    keys as written), ``system_properties`` has ``model_dir``, ``gpu_id`` and
    ``batch_size``. ``device`` is ``"cpu"`` or ``"cuda:<local_rank>"``.
    """

    model_name: str
    model_dir: str
    model_yaml_config: dict
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    manifest: dict = field(default_factory=dict)
    system_properties: dict = field(default_factory=dict)
    model_version: str | None = None
    _send_intermediate: Callable[[list], None] | None = field(default=None, repr=False)

    @property
    def handler_config(self) -> dict:
        """The free-form ``handler:`` section of model-config.yaml."""
        return self.model_yaml_config.get("handler") or {}

    @property
    def parallel_type(self) -> str | None:
        return self.model_yaml_config.get("parallelType")

    def send_intermediate(self, partials: list[Any]) -> None:
        """Stream one partial result per request of the current batch to the clients."""
        if self._send_intermediate is not None:
            self._send_intermediate(partials)
