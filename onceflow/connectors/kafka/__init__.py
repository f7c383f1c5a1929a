"""Kafka connectors (need ``confluent-kafka``): :mod:`.source`, :mod:`.sink`, and
:mod:`.protocol`, the minimal wire-protocol client used for recovery commits. The public
entry point is :mod:`onceflow.kafka`."""

from onceflow.connectors.kafka._common import brokers, import_kafka

__all__ = ["brokers", "import_kafka"]  # for onceflow.kafka (its own helpers stay private)
