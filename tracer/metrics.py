"""The tracer's own health and counters, in Prometheus text format.

What it serves: ``/metrics`` (Prometheus exposition format 0.0.4) and
``/healthz`` (200 "ok" while the drain loop is alive, 503 once it has missed
three intervals) on ``--metrics-addr:--metrics-port`` (127.0.0.1:9435 by
default; port 0 turns it off).

Cost: one daemon thread blocked in accept() (``tracer/prometheus.py``
writes the text and serves it); values are plain attributes written by the
drain loop and read by the server thread (single writes of Python ints and
floats, so no lock is needed).
"""

from __future__ import annotations

import time

from tracer import prometheus

__all__ = ["TracerMetrics", "MetricsServer"]


class TracerMetrics:
    """Counters and gauges the agent updates once per interval."""

    def __init__(self, mode: str = "", interval_s: float = 10.0) -> None:
        self.mode = mode
        self.interval_s = interval_s
        self.intervals = 0
        self.wakeups = 0
        self.records = {"connections": 0, "listeners": 0}
        self.map_drops: dict[str, int] = {}
        self.sink_errors = 0
        self.sink_dropped = 0
        self.queue_len = 0
        self.last_drain_s = 0.0
        self.last_drain_at = 0.0
        self.edges_read = 0
        self.open_connections = 0
        self.kernel_events = 0
        self.accepts_without_listener = 0
        self.handshake_clock_reads = 0
        self.missed_events = 0
        self.missed_closes = 0
        self.reconciliations = 0
        self.reconciled_connections = 0
        self.last_reconcile_s = 0.0
        #: Open connections' totals through socket diagnostics (tracer/sockdiag.py): cumulative counts.
        self.open_bytes = {"enabled": 0, "sockets": 0, "reported": 0, "bytes": 0, "credit_dropped": 0,
                           "errors": 0, "namespace_errors": 0, "map_reads": 0, "last_s": 0.0}
        #: NAT followed through conntrack (tracer/agent.py, tracer/nat.py): cumulative counts.
        self.nat = {"enabled": 0, "translations": 0, "records_translated": 0, "dropped": 0, "truncated": 0,
                    "overruns": 0, "malformed": 0, "errors": 0, "last_drain_s": 0.0}
        self.started_at = time.time()

    def healthy(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        last = self.last_drain_at or self.started_at
        return now - last < 3 * self.interval_s + 5

    def render(self) -> str:
        out = prometheus.Exposition()
        metric = out.metric
        metric("phobos_tracer_info", "gauge", "Tracing mode in use.", [({"mode": self.mode}, 1)])
        metric("phobos_tracer_intervals_drained_total", "counter", "Intervals drained from the kernel.",
               [(None, self.intervals)])
        metric("phobos_tracer_wakeups_total", "counter", "Times the drain loop woke up.", [(None, self.wakeups)])
        metric("phobos_tracer_records_emitted_total", "counter", "Records handed to the sink.",
               [({"kind": k}, v) for k, v in sorted(self.records.items())])
        metric("phobos_tracer_map_full_drops_total", "counter",
               "Kernel map updates that failed (map full), by map; socks = sockets not followed, "
               "seeded = open connections not counted.",
               [({"map": k}, v) for k, v in sorted(self.map_drops.items())] or [({"map": "edges"}, 0)])
        metric("phobos_tracer_missed_events_total", "counter",
               "TCP state changes the kernel did not run the BPF program for (another tracing program "
               "was running on the CPU: the program's recursion_misses).", [(None, self.missed_events)])
        metric("phobos_tracer_missed_closes_total", "counter",
               "Socket entries found stale when their address was reused (close never seen); their open "
               "count was taken back.", [(None, self.missed_closes)])
        metric("phobos_tracer_reconciliations_total", "counter",
               "Times the open gauges were reconciled with the kernel's socket list after drops.",
               [(None, self.reconciliations)])
        metric("phobos_tracer_reconciled_connections_total", "counter",
               "Open connections the socket table could not follow, counted by reconciliation.",
               [(None, self.reconciled_connections)])
        metric("phobos_tracer_last_reconcile_duration_seconds", "gauge", "Duration of the last reconciliation.",
               [(None, f"{self.last_reconcile_s:.6f}")])
        metric("phobos_tracer_lost_samples_total", "counter",
               "Samples lost between kernel and userspace (always 0: no per-event buffer is used).",
               [(None, 0)])
        metric("phobos_tracer_sink_errors_total", "counter", "Failed sink deliveries.", [(None, self.sink_errors)])
        metric("phobos_tracer_sink_dropped_records_total", "counter", "Records the sink threw away.",
               [(None, self.sink_dropped)])
        metric("phobos_tracer_sink_queue_length", "gauge", "Records waiting in the sink.", [(None, self.queue_len)])
        metric("phobos_tracer_last_drain_duration_seconds", "gauge", "Duration of the last drain.",
               [(None, f"{self.last_drain_s:.6f}")])
        metric("phobos_tracer_edges_read_total", "counter", "Edge entries read from kernel maps.",
               [(None, self.edges_read)])
        metric("phobos_tracer_open_connections", "gauge", "Connections open at the last drain.",
               [(None, self.open_connections)])
        metric("phobos_tracer_kernel_events_total", "counter", "TCP state changes seen by the BPF program.",
               [(None, self.kernel_events)])
        metric("phobos_tracer_accepts_without_listener_total", "counter",
               "Accepted connections whose listener was unknown (charged to pid 0).",
               [(None, self.accepts_without_listener)])
        metric("phobos_tracer_handshake_clock_reads_total", "counter",
               "Handshakes whose end the BPF program read from the clock because the kernel's own "
               "reading at the SYN-ACK was not usable (0 on kernels that refresh it there).",
               [(None, self.handshake_clock_reads)])
        nat = self.nat
        metric("phobos_tracer_nat_enabled", "gauge",
               "1 when destination NAT is followed through connection tracking.", [(None, nat["enabled"])])
        metric("phobos_tracer_nat_translations_total", "counter",
               "Destination-NAT translations (client, virtual address, backend) read, summed over drains.",
               [(None, nat["translations"])])
        metric("phobos_tracer_nat_records_translated_total", "counter",
               "Outbound records to a virtual address replaced by records to its backends.",
               [(None, nat["records_translated"])])
        metric("phobos_tracer_conntrack_dropped_total", "counter",
               "Conntrack entries counted but not read: over --nat-max-entries in a drain.",
               [(None, nat["dropped"])])
        metric("phobos_tracer_conntrack_truncated_drains_total", "counter",
               "Drains that reached --nat-max-entries.", [(None, nat["truncated"])])
        metric("phobos_tracer_conntrack_overruns_total", "counter",
               "Times the conntrack event socket overflowed (events lost, how many unknown).",
               [(None, nat["overruns"])])
        metric("phobos_tracer_conntrack_malformed_total", "counter",
               "Conntrack messages that could not be parsed.", [(None, nat["malformed"])])
        metric("phobos_tracer_conntrack_errors_total", "counter",
               "Conntrack drains that failed (the interval went without NAT).", [(None, nat["errors"])])
        metric("phobos_tracer_conntrack_last_drain_duration_seconds", "gauge",
               "Duration of the last conntrack drain.", [(None, f"{nat['last_drain_s']:.6f}")])
        ob = self.open_bytes
        metric("phobos_tracer_open_bytes_enabled", "gauge",
               "1 when the bytes of open connections are read at each drain (socket diagnostics).",
               [(None, ob["enabled"])])
        metric("phobos_tracer_open_bytes_total", "counter",
               "Bytes of connections still open, reported before their close.", [(None, ob["bytes"])])
        metric("phobos_tracer_open_bytes_sockets_read_total", "counter",
               "Sockets read through socket diagnostics, summed over drains.", [(None, ob["sockets"])])
        metric("phobos_tracer_open_bytes_credit_dropped_total", "counter",
               "Bytes reported while open whose close never came to take them back (a missed close).",
               [(None, ob["credit_dropped"])])
        metric("phobos_tracer_open_bytes_errors_total", "counter",
               "Drains whose open connections could not be read, and network namespaces that could not be "
               "entered.", [(None, ob["errors"] + ob["namespace_errors"])])
        metric("phobos_tracer_open_bytes_last_duration_seconds", "gauge",
               "Duration of the last read of open connections.", [(None, f"{ob['last_s']:.6f}")])
        return out.text()


class MetricsServer(prometheus.MetricsServer):
    """Serve ``metrics`` on (addr, port) from a daemon thread: ``/metrics`` and ``/healthz``."""

    def __init__(self, metrics: TracerMetrics, addr: str = "127.0.0.1", port: int = 9435) -> None:
        super().__init__(metrics.render, addr, port, healthy=metrics.healthy)
