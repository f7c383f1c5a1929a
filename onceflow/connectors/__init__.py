"""Sources and sinks: the contracts (small ABCs) and the built-in connectors."""
