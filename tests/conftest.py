"""Fixtures shared by test modules (a module's own fixture of the same name wins)."""

from __future__ import annotations

import pytest
from kafka_util import start_broker


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """The real Kafka broker's bootstrap address (``scripts/kafka start``)."""
    return start_broker()
