"""Fixtures shared by test modules (a module's own fixture of the same name wins), and the
deletion of the Kafka topics the session made (kafka_util.TOPICS) at its end."""

from __future__ import annotations

from typing import Any

import pytest
from kafka_util import TOPICS, start_broker

_LEFT = "onceflow_topics_left"
_left_key = pytest.StashKey[list[str]]()


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """The real Kafka broker's bootstrap address (``scripts/kafka start``)."""
    return start_broker()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Delete the topics this process recorded (an xdist worker: only its own). What cannot
    be deleted is reported at the end of the run (pytest_terminal_summary), from a worker
    through xdist's workeroutput."""
    left = TOPICS.delete_all()
    config: Any = session.config
    if hasattr(config, "workeroutput"):
        config.workeroutput[_LEFT] = left
    else:
        config.stash.setdefault(_left_key, []).extend(left)



@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:  # xdist, in the controller
    left = getattr(node, "workeroutput", {}).get(_LEFT, [])
    node.config.stash.setdefault(_left_key, []).extend(left)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    left = config.stash.get(_left_key, [])
    if left:
        terminalreporter.section("Kafka topics left behind", sep="=", yellow=True)
        terminalreporter.write_line(
            f"WARNING: {len(left)} topic(s) the tests made could not be deleted "
            "(delete them, or `scripts/kafka prune`):", yellow=True)
        for line in left[:50]:
            terminalreporter.write_line(f"  {line}", yellow=True)
        if len(left) > 50:
            terminalreporter.write_line(f"  ... and {len(left) - 50} more", yellow=True)
