"""The Prometheus endpoint: a custom collector over a :class:`JobStatus`.

Each job gets its own ``CollectorRegistry`` and its own HTTP server, so several jobs in
one process never clash and nothing lands in ``prometheus_client``'s global registry.
Names follow Flink's metrics, in Prometheus spelling (``numRecordsIn`` ->
``onceflow_operator_records_in_total``); every sample carries a ``flow`` label. The full
list, with Flink's names beside them, is in docs/operations.md#metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from onceflow.runtime.status import JobState, JobStatus
from onceflow.web.server import HttpService, url_for

log = logging.getLogger("onceflow.web")

_OP_LABELS = ["flow", "operator_uid", "operator_name", "subtask"]

# name -> (type, help); the collector yields exactly these families, in this order
METRICS: dict[str, tuple[str, str]] = {
    "onceflow_operator_records_in_total": (
        "counter", "Records an operator subtask received (exactly-once count: restored "
        "from the checkpoint after a restart)."),
    "onceflow_operator_records_out_total": (
        "counter", "Records an operator subtask emitted (same counting as records_in)."),
    "onceflow_operator_records_in_per_second": (
        "gauge", "Records received per second over the last report interval (~1 s)."),
    "onceflow_operator_records_out_per_second": (
        "gauge", "Records emitted per second over the last report interval (~1 s)."),
    "onceflow_operator_busy_time_seconds_total": (
        "counter", "Time the subtask's task spent processing batches, since its worker "
        "started."),
    "onceflow_operator_backpressured_time_seconds_total": (
        "counter", "Time the subtask's task could not take input because an output was "
        "full, since its worker started."),
    "onceflow_operator_busy_time_ms_per_second": (
        "gauge", "Busy milliseconds per second over the last report interval (Flink's "
        "busyTimeMsPerSecond)."),
    "onceflow_operator_backpressured_time_ms_per_second": (
        "gauge", "Backpressured milliseconds per second over the last report interval "
        "(Flink's backPressuredTimeMsPerSecond)."),
    "onceflow_operator_watermark_seconds": (
        "gauge", "The subtask's current watermark (event time, seconds; +Inf once bounded "
        "input ended), like Flink's currentInputWatermark."),
    "onceflow_operator_watermark_lag_seconds": (
        "gauge", "Wall-clock time now minus the subtask's watermark (for event times that "
        "are Unix times)."),
    "onceflow_operator_late_records_dropped_total": (
        "counter", "Late records a window dropped because no late-data side output took "
        "them (Flink's numLateRecordsDropped)."),
    "onceflow_operator_lost_transactions_total": (
        "counter", "Transactions of completed checkpoints a sink found aborted by the broker "
        "(their output is lost) and carried on past, since the job first started (KafkaSink "
        "on_lost_transaction='continue'; each is also logged as an error)."),
    "onceflow_job_last_checkpoint_inflight_bytes": (
        "gauge", "In-flight data the last completed checkpoint persisted (unaligned "
        "checkpoints)."),
    "onceflow_job_last_checkpoint_unaligned_subtasks": (
        "gauge", "Subtasks whose snapshot was unaligned in the last completed checkpoint."),
    "onceflow_job_checkpoints_completed_total": (
        "counter", "Completed checkpoints (Flink's numberOfCompletedCheckpoints)."),
    "onceflow_job_checkpoints_failed_total": (
        "counter", "Failed checkpoints: expired, declined, or metadata not written "
        "(Flink's numberOfFailedCheckpoints)."),
    "onceflow_job_checkpoints_in_progress": (
        "gauge", "Checkpoints triggered and not yet complete or aborted."),
    "onceflow_job_last_checkpoint_id": (
        "gauge", "Id of the last completed checkpoint."),
    "onceflow_job_last_checkpoint_duration_seconds": (
        "gauge", "Trigger to completion of the last completed checkpoint."),
    "onceflow_job_last_checkpoint_size_bytes": (
        "gauge", "Bytes the last completed checkpoint wrote (incremental size)."),
    "onceflow_job_last_checkpoint_full_size_bytes": (
        "gauge", "Full state size of the last completed checkpoint."),
    "onceflow_job_last_checkpoint_alignment_seconds": (
        "gauge", "Longest barrier alignment of any subtask in the last completed "
        "checkpoint."),
    "onceflow_job_last_checkpoint_sync_seconds": (
        "gauge", "Longest synchronous snapshot phase in the last completed checkpoint."),
    "onceflow_job_last_checkpoint_async_seconds": (
        "gauge", "Longest asynchronous (write) phase in the last completed checkpoint."),
    "onceflow_job_restarts_total": (
        "counter", "Restarts of the job (Flink's numRestarts)."),
    "onceflow_job_last_restore_timestamp_seconds": (
        "gauge", "When the last restore from a checkpoint finished (Unix time)."),
    "onceflow_job_last_restore_duration_seconds": (
        "gauge", "How long the last restore took: workers forked to all tasks running."),
    "onceflow_job_uptime_seconds": (
        "gauge", "Seconds since the job started (until it ended)."),
    "onceflow_job_state": (
        "gauge", "1 for the job's current state, 0 for the others."),
}



# (metric, field of a subtask's row in JobStatus.snapshot(), divisor)
_OPERATOR_VALUES = [
    ("onceflow_operator_records_in_total", "records_in", 1),
    ("onceflow_operator_records_out_total", "records_out", 1),
    ("onceflow_operator_records_in_per_second", "records_in_per_s", 1),
    ("onceflow_operator_records_out_per_second", "records_out_per_s", 1),
    ("onceflow_operator_busy_time_seconds_total", "busy_ms", 1e3),
    ("onceflow_operator_backpressured_time_seconds_total", "backpressured_ms", 1e3),
    ("onceflow_operator_busy_time_ms_per_second", "busy_ms_per_s", 1),
    ("onceflow_operator_backpressured_time_ms_per_second", "backpressured_ms_per_s", 1),
]
# (metric, field of the last completed checkpoint's row, divisor)
_LAST_CHECKPOINT_VALUES = [
    ("onceflow_job_last_checkpoint_id", "id", 1),
    ("onceflow_job_last_checkpoint_duration_seconds", "duration_ms", 1e3),
    ("onceflow_job_last_checkpoint_size_bytes", "incremental_size", 1),
    ("onceflow_job_last_checkpoint_full_size_bytes", "size", 1),
    ("onceflow_job_last_checkpoint_alignment_seconds", "alignment_ms", 1e3),
    ("onceflow_job_last_checkpoint_sync_seconds", "sync_ms", 1e3),
    ("onceflow_job_last_checkpoint_async_seconds", "async_ms", 1e3),
    ("onceflow_job_last_checkpoint_inflight_bytes", "inflight_bytes", 1),
    ("onceflow_job_last_checkpoint_unaligned_subtasks", "unaligned_subtasks", 1),
]

class StatusCollector(Collector):
    """Turns one ``JobStatus.snapshot()`` per scrape into metric families."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status

    def describe(self) -> list[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.status.snapshot())

    def _families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        flow = self.status.flow
        fams: dict[str, Any] = {}
        for name, (kind, doc) in METRICS.items():
            short = name.removesuffix("_total") if kind == "counter" else name
            labels = _OP_LABELS if name.startswith("onceflow_operator_") else ["flow"]
            if name == "onceflow_job_state":
                labels = ["flow", "state"]
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fams[name] = cls(short, doc, labels=labels)
        if snap:
            for op in snap["operators"]:
                for s in op["subtasks"]:
                    lab = [flow, op["uid"], op["name"], str(s["subtask"])]
                    for name, field, div in _OPERATOR_VALUES:
                        fams[name].add_metric(lab, s[field] if div == 1 else s[field] / div)
                    wm = s.get("watermark")
                    if wm is not None:
                        fams["onceflow_operator_watermark_seconds"].add_metric(
                            lab, math.inf if wm == "end" else wm)
                    if s.get("watermark_lag_s") is not None:
                        fams["onceflow_operator_watermark_lag_seconds"].add_metric(
                            lab, s["watermark_lag_s"])
                    fams["onceflow_operator_late_records_dropped_total"].add_metric(
                        lab, s.get("late_dropped", 0))
                    fams["onceflow_operator_lost_transactions_total"].add_metric(
                        lab, s.get("lost_transactions", 0))
            ck = snap["checkpoints"]
            job = [flow]
            fams["onceflow_job_checkpoints_completed_total"].add_metric(job, ck["completed"])
            fams["onceflow_job_checkpoints_failed_total"].add_metric(job, ck["failed"])
            fams["onceflow_job_checkpoints_in_progress"].add_metric(job, ck["in_progress"])
            last = ck["last_completed"]
            if last is not None:
                for name, field, div in _LAST_CHECKPOINT_VALUES:
                    v = (last[field] or 0.0) if field == "duration_ms" else last[field]
                    fams[name].add_metric(job, v if div == 1 else v / div)
            fams["onceflow_job_restarts_total"].add_metric(job, len(snap["restarts"]))
            restore = snap["last_restore"]
            if restore is not None:
                fams["onceflow_job_last_restore_timestamp_seconds"].add_metric(
                    job, restore["time"])
                fams["onceflow_job_last_restore_duration_seconds"].add_metric(
                    job, restore["duration_s"])
            fams["onceflow_job_uptime_seconds"].add_metric(job, snap["uptime_s"])
            for st in JobState:
                fams["onceflow_job_state"].add_metric([flow, st.value],
                                                      1.0 if snap["state"] == st.value else 0.0)
        yield from fams.values()


class MetricsServer(HttpService):
    """``GET /metrics`` for one job, on 127.0.0.1 unless told otherwise, in a daemon
    thread, until :meth:`close`."""

    def __init__(self, status: JobStatus, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatusCollector(status))
        registry = self.registry

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "metrics are at /metrics")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: %s", format % args)

        class _Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._bind("metrics", host, port, lambda addr: _Server(addr, _Handler),
                   "onceflow-metrics")
        self.url = url_for(host, self.port) + "/metrics"
