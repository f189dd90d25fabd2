"""Turn drained kernel counters into ConnectionRecords and ListenerRecords.

What it holds: the userspace half of the per-edge aggregation.  The kernel
counts connects/accepts/closes/failures and an ``open`` delta per edge into
one of two map generations; each interval the agent drains the idle
generation (see ``tracer/probe.py``) and hands the result here.  Event
counters are already per-interval deltas; ``open`` is a gauge that lives
here: the sum of every delta the kernel reported plus the connections found
open in /proc at start-up or by a reconciliation (after the kernel's socket
map refused sockets, the agent seeds the open connections it does not
follow, see ``tracer/agent.py``).

Health figures (handshakes, their time and latency histogram, retransmits,
aborts) are per-interval sums like the event counters; the histogram is
summed bucket by bucket.

Pure logic, no BPF and no /proc: everything is unit-testable.

Caveats: an edge whose gauge is zero and which saw nothing in an interval is
forgotten (its state is a few dozen bytes, but a busy host sees millions of
client edges a day); if the kernel later reports a close for it the gauge
would go negative, so it is clamped at zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from tracer import records

__all__ = ["EdgeCounts", "Aggregator", "connection_record", "listener_record", "COUNTERS", "SUMS"]

COUNTERS = ("connects", "accepts", "closes", "failures")
#: Summed like the counters, but not what makes an edge active.
SUMS = ("duration_ns_sum", "bytes_sent", "bytes_received", "handshakes", "handshake_us_sum", "retransmits",
        "aborts")
_U32 = records.U32
_U64 = records.U64


@dataclass
class EdgeCounts:
    """What one edge did in one interval, and how many connections are open at its end."""

    connects: int = 0
    accepts: int = 0
    closes: int = 0
    failures: int = 0
    open: int = 0
    duration_ns_sum: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    handshakes: int = 0
    handshake_us_sum: int = 0
    handshake_hist: list[int] = field(default_factory=list)   # empty, or records.HANDSHAKE_BUCKETS counts
    retransmits: int = 0
    aborts: int = 0
    comm: str = ""

    def active(self) -> bool:
        return bool(self.connects or self.accepts or self.closes or self.failures)


@dataclass
class _Gauge:
    open: int = 0
    comm: str = ""


@dataclass
class Aggregator:
    """Per-edge ``open`` gauges across intervals.

    ``apply`` takes one drain - ``[(edge_key, values)]`` where values carry
    the per-interval event counts and ``open_delta`` - and returns
    ``{edge_key: EdgeCounts}`` for every edge that was active in the interval
    or still has connections open.  Edge keys are any hashable value.
    """

    gauges: dict[Any, _Gauge] = field(default_factory=dict)

    def seed(self, key: Any, open_count: int, comm: str = "") -> None:
        """Connections open before the tracer started (counted once, never as connects)."""
        gauge = self.gauges.setdefault(key, _Gauge())
        gauge.open += open_count
        if comm and not gauge.comm:
            gauge.comm = comm

    def unseed(self, key: Any, open_count: int = 1) -> None:
        gauge = self.gauges.get(key)
        if gauge is not None:
            gauge.open = max(0, gauge.open - open_count)

    def apply(self, drained: Iterable[tuple[Any, Mapping[str, Any]]]) -> dict[Any, EdgeCounts]:
        out: dict[Any, EdgeCounts] = {}
        for key, values in drained:
            counts = out.get(key)
            if counts is None:
                counts = out[key] = EdgeCounts()
            for name in COUNTERS + SUMS:
                setattr(counts, name, getattr(counts, name) + int(values.get(name, 0)))
            hist = values.get("handshake_hist")
            if hist and any(hist):
                if not counts.handshake_hist:
                    counts.handshake_hist = [0] * records.HANDSHAKE_BUCKETS
                for i, n in enumerate(hist[:records.HANDSHAKE_BUCKETS]):
                    counts.handshake_hist[i] += int(n)
            gauge = self.gauges.setdefault(key, _Gauge())
            gauge.open = max(0, gauge.open + int(values.get("open_delta", 0)))
            comm = values.get("comm") or ""
            if comm:
                gauge.comm = comm
        for key, gauge in list(self.gauges.items()):
            counts = out.get(key)
            if counts is None:
                if gauge.open == 0:
                    del self.gauges[key]
                    continue
                counts = out[key] = EdgeCounts()
            counts.open = gauge.open
            counts.comm = gauge.comm
            if gauge.open == 0:
                # Reported once with its final numbers, then forgotten.
                del self.gauges[key]
        return out

    def open_total(self) -> int:
        return sum(g.open for g in self.gauges.values())


def _cap(value: int, top: int) -> int:
    return max(0, min(int(value), top))


def connection_record(
    edge: Any,
    counts: EdgeCounts,
    *,
    ts: float,
    interval_s: int,
    dc: str,
    host: str,
    host_ip: str,
    proc: Mapping[str, Any],
) -> dict[str, Any]:
    """One ConnectionRecord (see ``tracer.records.CONNECTION_FIELDS``).

    ``edge`` has the attributes of ``tracer.probe.EdgeKey``; ``proc`` is the
    attribution of its pid (``tracer.attribution``), possibly empty.
    """
    return {
        "v": records.VERSION,
        "ts": records.format_ts(ts),
        "interval_s": _cap(interval_s, _U32),
        "dc": dc,
        "host": host,
        "host_ip": records.normalize_ip(host_ip or "::"),
        "netns": _cap(edge.netns, _U32),
        "pid": _cap(edge.pid, _U32),
        "comm": proc.get("comm") or counts.comm or "",
        "service": proc.get("service") or counts.comm or "",
        "container_id": proc.get("container_id", ""),
        "pod": proc.get("pod", ""),
        "namespace": proc.get("namespace", ""),
        "direction": edge.direction,
        "local_ip": records.normalize_ip(edge.local_ip),
        "local_port": _cap(edge.local_port, records.U16),
        "remote_ip": records.normalize_ip(edge.remote_ip),
        "remote_port": _cap(edge.remote_port, records.U16),
        "connects": _cap(counts.connects, _U32),
        "accepts": _cap(counts.accepts, _U32),
        "closes": _cap(counts.closes, _U32),
        "failures": _cap(counts.failures, _U32),
        "open": _cap(counts.open, _U32),
        "duration_ms_sum": _cap(counts.duration_ns_sum // 1_000_000, _U64),
        "bytes_sent": _cap(counts.bytes_sent, _U64),
        "bytes_received": _cap(counts.bytes_received, _U64),
        "handshakes": _cap(counts.handshakes, _U32),
        "handshake_us_sum": _cap(counts.handshake_us_sum, _U64),
        # Empty when no handshake was timed: most records of a pooled client.
        "handshake_hist": [_cap(n, _U32) for n in counts.handshake_hist] if any(counts.handshake_hist) else [],
        "retransmits": _cap(counts.retransmits, _U64),
        "aborts": _cap(counts.aborts, _U32),
    }


def listener_record(
    listener: Mapping[str, Any], *, ts: float, dc: str, host: str, proc: Mapping[str, Any]
) -> dict[str, Any]:
    """One ListenerRecord from a listener-map entry ``{ip, port, pid, comm}``."""
    return {
        "v": records.VERSION,
        "ts": records.format_ts(ts),
        "dc": dc,
        "host": host,
        "ip": records.normalize_ip(listener.get("ip") or "::"),
        "port": _cap(listener["port"], records.U16),
        "pid": _cap(listener.get("pid", 0), _U32),
        "comm": proc.get("comm") or listener.get("comm", ""),
        "service": proc.get("service") or listener.get("comm", ""),
        "container_id": proc.get("container_id", ""),
        "pod": proc.get("pod", ""),
        "namespace": proc.get("namespace", ""),
    }


def build_records(
    counts_by_edge: Mapping[Any, EdgeCounts],
    listeners: Iterable[Mapping[str, Any]],
    *,
    ts: float,
    interval_s: int,
    dc: str,
    host: str,
    host_ip: str,
    attribute: Callable[[int, str, Mapping[str, Any]], Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All records of one interval.

    ``attribute(pid, comm, endpoint)`` returns the process attribution;
    ``endpoint`` carries ip/port so catalog rules can match on them.
    """
    conns = []
    for edge, counts in counts_by_edge.items():
        local = {"ip": edge.local_ip, "port": edge.local_port}
        proc = attribute(edge.pid, counts.comm, local)
        conns.append(connection_record(edge, counts, ts=ts, interval_s=interval_s, dc=dc, host=host,
                                       host_ip=host_ip, proc=proc))
    lis = []
    seen = set()
    for listener in listeners:
        key = (listener.get("ip"), listener["port"], listener.get("pid"))
        if key in seen:
            continue  # the same port in several network namespaces of one pid
        seen.add(key)
        proc = attribute(listener.get("pid", 0), listener.get("comm", ""),
                         {"ip": listener.get("ip", ""), "port": listener["port"]})
        lis.append(listener_record(listener, ts=ts, dc=dc, host=host, proc=proc))
    return conns, lis
