"""The runtime: worker processes, tasks, channels, barrier alignment and the driver.

Nothing here is imported by users; :mod:`onceflow.api` builds a plan and hands it to
:class:`onceflow.runtime.driver.JobDriver`.
"""
