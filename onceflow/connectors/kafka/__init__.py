"""Kafka connectors (need ``confluent-kafka``): :mod:`.source`, :mod:`.sink`, and
:mod:`.protocol`, the minimal wire-protocol client used for recovery commits. The public
entry point is :mod:`onceflow.kafka`."""

from onceflow.connectors.kafka._common import brokers, connection_config, import_kafka
from onceflow.connectors.kafka._logs import client_config, serve_logs

# for onceflow.kafka and onceflow.nexmark (the package's other helpers stay private)
__all__ = ["brokers", "client_config", "connection_config", "import_kafka", "serve_logs"]
