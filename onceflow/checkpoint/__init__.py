"""Checkpoints: the coordinator (when is checkpoint n complete) and the storage layout."""
