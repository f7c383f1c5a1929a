"""The exception tree: every exception class onceflow defines lives in onceflow/errors.py,
the tree drawn in that module's docstring is exactly the classes in it (names and
parents), old import paths still work, and foreign errors are wrapped with their cause."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re

import pytest

import onceflow
from onceflow import errors

#: exceptions that are not errors users see: internal signals between two modules
# internal signals that never reach users: caught and wrapped where they are raised
INTERNAL = {"onceflow.runtime.channels.PeerClosedError",
            "onceflow.connectors.files._RecordError",  # -> UserFunctionError naming the sink
            "onceflow.executors.base.FewerSlots",  # executor -> driver: lower the parallelism
            "onceflow.executors.ray._Stuck"}  # placement group not placed: place by hand


def _docstring_tree() -> dict[str, str | None]:
    """{class name: parent name} as drawn in the errors module's docstring."""
    assert errors.__doc__ is not None
    block = errors.__doc__.split("::", 1)[1]
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        m = re.match(r"^(\s*(?:[│├└─]\s*)*)([A-Z][A-Za-z]+)\b", line)
        if m is None or not m.group(2).endswith(("Error", "Exceeded")):
            continue
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        tree[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    return tree


def _classes() -> dict[str, type[BaseException]]:
    return {n: c for n, c in vars(errors).items()
            if inspect.isclass(c) and issubclass(c, BaseException)
            and c.__module__ == errors.__name__}


def test_the_docstring_tree_is_the_classes_of_the_module() -> None:
    tree, classes = _docstring_tree(), _classes()
    assert set(tree) == set(classes)
    for name, cls in classes.items():
        parents = [b.__name__ for b in cls.__bases__ if b.__module__ == errors.__name__]
        assert tree[name] == (parents[0] if parents else None), name
        assert cls.__doc__ and cls.__doc__ != BaseException.__doc__, f"{name}: no docstring"
        if name != "OnceflowError":
            assert issubclass(cls, errors.OnceflowError)


def test_no_exception_class_is_defined_outside_errors() -> None:
    stray = []
    for info in pkgutil.walk_packages(onceflow.__path__, "onceflow."):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == mod.__name__ and mod.__name__ != errors.__name__:
                if f"{mod.__name__}.{name}" not in INTERNAL:
                    stray.append(f"{mod.__name__}.{name}")
    assert stray == []


@pytest.mark.parametrize(("module", "name"), [
    ("onceflow.runtime.control", "SavepointError"),
    ("onceflow.cli.remote", "RemoteError"),
    ("onceflow.connectors.kafka.protocol", "KafkaProtocolError"),
    ("onceflow.connectors.kafka.sink", "KafkaTransactionLostError"),
    ("onceflow.kafka", "KafkaTransactionLostError"),
    ("onceflow.checkpoint.coordinator", "CheckpointFailuresExceeded"),
    ("onceflow", "SavepointError"),
    ("onceflow", "ConnectorError"),
])
def test_old_import_paths_name_the_same_classes(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_foreign_errors_become_connector_errors_with_their_cause() -> None:
    with pytest.raises(errors.ConnectorError, match=r"PostgresSink\(t\): commit: OSError: gone") \
            as exc:
        with errors.foreign_errors("PostgresSink(t): commit"):
            raise OSError("gone")
    assert isinstance(exc.value.__cause__, OSError)
    with pytest.raises(errors.ConfigurationError):  # onceflow's own pass through
        with errors.foreign_errors("x"):
            raise errors.ConfigurationError("bad")
    with pytest.raises(KeyError):  # only the types asked for, when given
        with errors.foreign_errors("x", OSError):
            raise KeyError("k")


def test_kafka_protocol_error_keeps_its_code_across_processes() -> None:
    e = pickle.loads(pickle.dumps(errors.KafkaProtocolError("no", code=47)))
    assert (str(e), e.code) == ("no", 47)


def test_moved_classes_unpickle_from_their_old_paths() -> None:
    """Objects pickled before a class moved name its old module: it still resolves."""
    from onceflow.checkpoint import coordinator, stats

    old = pickle.dumps(stats.CheckpointStats(1, stats.CheckpointStatus.COMPLETED, 0.0),
                       protocol=0)  # text: module paths can be rewritten in place
    old = old.replace(b"onceflow.checkpoint.stats", b"onceflow.checkpoint.coordinator")
    assert b"onceflow.checkpoint.coordinator" in old
    st = pickle.loads(old)
    assert type(st) is stats.CheckpointStats and st.id == 1
    assert coordinator.CheckpointStatus is stats.CheckpointStatus
