"""Observability over HTTP: the dashboard (``server``) and the Prometheus endpoint
(``metrics``). Both only *read* a job's :class:`~onceflow.runtime.status.JobStatus`; the
driver starts and stops them (``onceflow.runtime.observers``). The page is plain HTML and
JavaScript in ``static/``, shipped as package data: no build step, nothing from a CDN.
"""
