"""The public dataflow API (re-exported from :mod:`onceflow`)."""
