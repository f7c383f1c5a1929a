"""Executors: where a job's subtasks run (see :mod:`onceflow.executors.base`).

``Local()`` (the default) forks one worker process per subtask index; ``Inline()`` runs
them as threads of the calling process, for debugging and fast tests::

    flow.run(executor="inline")            # or executor=of.executors.Inline()
"""

from onceflow.executors.base import Executor, Workers
from onceflow.executors.inline import Inline
from onceflow.executors.local import Local

__all__ = ["Executor", "Inline", "Local", "Workers", "resolve"]

_BY_NAME = {"local": Local, "inline": Inline}


def resolve(executor: object) -> Executor:
    """An executor from what ``Flow.run(executor=...)`` accepts: None (``Local()``),
    ``"local"``, ``"inline"`` or an :class:`Executor`."""
    from onceflow.errors import ConfigurationError

    if executor is None:
        return Local()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str) and executor in _BY_NAME:
        return _BY_NAME[executor]()
    raise ConfigurationError(
        f"executor={executor!r}: pass 'local' (forked worker processes, the default), "
        "'inline' (threads of this process) or an of.executors.Executor")
