"""Lifecycle states of models and workers, as the REST descriptions show them.

Model:  starting -> ready -> stopping        (failed from starting, or when a worker
                    ready -> failed           cannot be brought back)
Worker: starting -> ready <-> busy -> stopping -> stopped
        starting -> failed                   (initialize raised, or startupTimeout)
        ready/busy -> restarting -> starting (a rank died or a batch timed out)
"""
from enum import Enum


class ModelState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class WorkerState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
