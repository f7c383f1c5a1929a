"""Kafka connectors (need ``confluent-kafka``): :mod:`.source`, :mod:`.sink`, and
:mod:`.protocol`, the minimal wire-protocol client used for recovery commits. The public
entry point is :mod:`onceflow.kafka`."""
