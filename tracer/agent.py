"""``phobos trace``: the per-host agent that drains the kernel's edge counters.

What it does: checks prerequisites, loads the BPF program
(``tracer/probe.py``), seeds listeners and open connections from a single
/proc snapshot, then once per ``--interval`` drains the per-edge counters,
attributes pids to processes, containers, pods and services, and hands
ConnectionRecords and ListenerRecords to a sink.  Health and counters are
served in Prometheus format.  Unless ``--no-nat``, each drain also reads
the host's connection tracking (``tracer/conntrack.py``) and follows
destination NAT to the backends (``tracer/nat.py``): a client of a
ClusterIP, a NodePort or a published port is reported as connected to the
backend it reached, the virtual address kept in ``nat_ip``/``nat_port``.
Unless ``--no-open-bytes``, it reads what connections still open carried
since the last drain (``tracer/sockdiag.py``), so a pooled connection's
bytes show while it lasts, not only at its close.

How often it runs: one wake-up per interval, whatever the connection rate;
the work per wake-up grows with the number of distinct edges, never with the
number of connections (the kernel aggregates).

Losses are counted, reported and repaired: a full kernel socket table
(``--max-socks``) refuses new sockets, each refusal is counted
(``map_drops.socks``), and the next drain reconciles with the kernel's
socket list - the same /proc read as the start-up snapshot - so that every
open connection the kernel does not follow is counted as open and its close
is seen.  Drops and missed events (the kernel skipping the BPF program
while another tracing program runs on the CPU) go to a warning (at most one
a minute per kind), ``/metrics`` and the summary line at exit.

Cost of a reconciliation: one /proc read (every process's fd directory and
tcp/tcp6 of each network namespace, about 1.5 s for 72,000 sockets here)
plus a batched read of the socket table (0.1 s for 65,536 entries); it runs
only after new drops and at most a tenth of the time (the next one waits
ten times the last one's duration).  Size ``--max-socks`` so that it never
runs: above the host's peak of TCP sockets, all namespaces.

Caveats: start-up compiles the BPF program (about two seconds of clang);
``--mode auto`` may try fentry and kprobes first and log why they failed.
On SIGINT/SIGTERM the agent drains once more so the last partial interval
is not lost.  A socket the full table refused and that closed before the next
reconciliation has its connect or accept counted but not its close (the
open gauge is right either way).  Open connections beyond ``--max-socks``
plus the seeded map's 65,536 are not counted (``map_drops.seeded``).
/proc shows which process owns a socket, and only owned sockets are
seeded: a refused connection still in a listener's accept queue at the
reconciliation is counted only at the next one (which only runs after new
drops).

Examples::

    phobos trace                                  # JSON lines on stdout, 10 s intervals
    phobos trace --interval 1 --mode tracepoint   # force the tracepoint-only mode
    phobos trace --sink http://127.0.0.1:8080     # post to the API's ingest endpoint
    PHOBOS_SINK=kafka://broker:9092 phobos trace  # every flag has a PHOBOS_* variable
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

import tracer.kafka_sink  # noqa: F401 - registers kafka:// with the sinks (confluent-kafka loads when one opens)
from tracer import aggregate, attribution, nat, preflight, records
from tracer.metrics import MetricsServer, TracerMetrics
from tracer.settings import TRACER_SETTINGS
from tracer.sinks import SinkError, make_sink, sink_factory

__all__ = ["configure_parser", "run", "main", "EXAMPLES"]

log = logging.getLogger("phobos.tracer")

EXAMPLES = """examples:
  phobos trace                                  JSON lines on stdout every 10 s
  phobos trace --interval 1 --mode tracepoint   tracepoint-only mode, 1 s intervals
  phobos trace --sink http://127.0.0.1:8080     POST batches to the API's /api/v1/ingest
  phobos trace --catalog catalog.yaml           service names from the catalog's rules
  PHOBOS_INTERVAL=30 PHOBOS_SINK=stdout phobos trace
every flag can be set by its PHOBOS_* environment variable (PHOBOS_TOKEN: bearer token for http sinks)
"""

EXIT_PREREQ = 2
WARN_EVERY_S = 60.0   # at most one warning per kind of loss per minute
SIZING = ("size --max-socks above the peak number of TCP sockets on the host, all network namespaces "
          "(\"alloc\" in /proc/net/sockstat is a safe upper bound)")
LOSS_TEXT = {
    "socks": "kernel socket table full ({max_socks} entries): {value} sockets not followed so far (+{new}); "
             "their connects/accepts are counted, their closes only if a reconciliation finds them open; "
             + SIZING,
    "seeded": "kernel map seeded full: {value} open connections not counted so far (+{new}); " + SIZING,
    "missed_events": "the kernel skipped the tracer's program {value} times so far (+{new}) because another "
                     "tracing program was running on the CPU; connects, accepts or closes were lost",
    "missed_closes": "{value} socket entries so far (+{new}) belonged to sockets whose close was never seen; "
                     "their open count was taken back",
}


def _env(name: str) -> Any:
    """A flag's default: the setting ``name`` of ``tracer.settings``, from its PHOBOS_* variable."""
    return TRACER_SETTINGS.default(name, "phobos trace")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``phobos trace`` flags (defaults from PHOBOS_* variables)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not parser.epilog:
        parser.epilog = EXAMPLES
    add = parser.add_argument
    add("--mode", choices=("auto", "tracepoint", "kprobe", "fentry"), default=_env("MODE"),
        help="hooks to use: tracepoint only, or also kprobes/fentry on tcp_v4/v6_connect and "
             "inet_csk_accept; auto picks the best the kernel allows [PHOBOS_MODE, default auto]")
    add("--interval", type=float, default=_env("INTERVAL"),
        help="seconds between drains of the kernel counters [PHOBOS_INTERVAL, default 10]")
    add("--sink", default=_env("SINK"),
        help="stdout | http://HOST:PORT | kafka://BROKERS/TOPIC [PHOBOS_SINK, default stdout]")
    add("--catalog", default=_env("CATALOG"),
        help="catalog file whose rules name services [PHOBOS_CATALOG]")
    add("--dc", default=_env("DC") or _env("NODE_ZONE"),
        help="datacenter/zone label [PHOBOS_DC, default $PHOBOS_NODE_ZONE or empty]")
    add("--host", default=_env("HOST") or socket.gethostname(),
        help="host name in records [PHOBOS_HOST, default the host name]")
    add("--metrics-port", type=int, default=_env("METRICS_PORT"),
        help="port of /metrics and /healthz, 0 = off [PHOBOS_METRICS_PORT, default 9435]")
    add("--metrics-addr", default=_env("METRICS_ADDR"),
        help="address for /metrics [PHOBOS_METRICS_ADDR, default 127.0.0.1]")
    add("--max-queue", type=int, default=_env("MAX_QUEUE"),
        help="records a network sink keeps while its target is down; oldest dropped beyond "
             "[PHOBOS_MAX_QUEUE, default 100000]")
    add("--max-edges", type=int, default=_env("MAX_EDGES"),
        help="edges the kernel counts at once (distinct process, direction, addresses and server port; an edge idle for three drains gives its slot back) [PHOBOS_MAX_EDGES, default 16384]")
    add("--max-socks", type=int, default=_env("MAX_SOCKS"),
        help="kernel socket table size (rounded up to a power of two): one entry per TCP socket from connect "
             "or completed handshake "
             "to close (not listeners, not TIME_WAIT; both ends of a local connection count); size it "
             "above the host's peak of TCP sockets in all network namespaces (\"alloc\" in "
             "/proc/net/sockstat is a safe upper bound). Sockets beyond it are counted as "
             "map_drops.socks and repaired by reconciling with /proc [PHOBOS_MAX_SOCKS, default 65536]")
    add("--duration", type=float, default=_env("DURATION"),
        help="stop after this many seconds, 0 = run until signalled [PHOBOS_DURATION]")
    add("--nat", action=argparse.BooleanOptionalAction, default=_env("NAT"),
        help="follow destination NAT (Kubernetes ClusterIP/NodePort, published container ports) to the "
             "backends through connection tracking; needs CAP_NET_ADMIN [PHOBOS_NAT, default on]")
    add("--nat-netns", default=_env("NAT_NETNS"),
        help="network namespace whose connection tracking is read: a name under /run/netns or a path "
             "such as /proc/1/ns/net [PHOBOS_NAT_NETNS, default the tracer's own, the host's with hostNetwork]")
    add("--nat-max-entries", type=int, default=_env("NAT_MAX_ENTRIES"),
        help="conntrack entries parsed per drain at most; more are counted as dropped "
             "[PHOBOS_NAT_MAX_ENTRIES, default 100000]")
    add("--open-bytes", action=argparse.BooleanOptionalAction, default=_env("OPEN_BYTES"),
        help="report the bytes and retransmits of connections still open at each drain, read through "
             "socket diagnostics (what ss -ti shows), not only at their close [PHOBOS_OPEN_BYTES, default on]")
    add("--log-level", default=_env("LOG_LEVEL"),
        choices=("debug", "info", "warning", "error"), help="stderr log level [PHOBOS_LOG_LEVEL, default info]")
    return parser


def _load_catalog(path: str):
    from tracer.catalog import load_catalog  # noqa: PLC0415 - PyYAML and RE2 only when --catalog is given
    return load_catalog(path)


class Agent:
    """One tracer run: probe, attribution, aggregation, sink, metrics."""

    def __init__(self, args: argparse.Namespace, probe: Any, sink: Any, attributor: attribution.Attributor,
                 metrics: TracerMetrics, conntrack: Any = None, open_totals: Any = None) -> None:
        self.args = args
        self.probe = probe
        self.conntrack = conntrack      # a tracer.conntrack.ConntrackReader, or None: no NAT followed
        metrics.nat["enabled"] = int(conntrack is not None)
        self.open_totals = open_totals  # a tracer.sockdiag.OpenTotals, or None: bytes only at close
        metrics.open_bytes["enabled"] = int(open_totals is not None)
        self.sink = sink
        self.attributor = attributor
        self.metrics = metrics
        self.aggregator = aggregate.Aggregator()
        self.host_ip = attribution.host_ip()
        self.stop = threading.Event()
        self.invalid_records = 0
        self.first_record_at: float | None = None
        self.seed_failures = 0          # connections the full seeded map refused
        self._stats: dict[str, int] = {}
        self._warned: dict[str, tuple[int, float]] = {}
        self._reconciled_at = 0         # unfollowed-socket count the last reconciliation answered
        self._next_reconcile = 0.0

    # -- start-up and reconciliation -----------------------------------------
    def seed(self, proc_root: str | None = None) -> dict[str, int]:
        """Listeners and open connections that predate the tracer, from one /proc read."""
        result = self._seed_from_snapshot(proc_root or self.attributor.proc_root, listeners=True)
        log.info("start-up snapshot: %d listeners, %d open connections", result["listeners"], result["connections"])
        return result

    def reconcile(self, proc_root: str | None = None) -> dict[str, int]:
        """Repair the open gauges after the kernel could not follow some sockets.

        The same /proc read as at start-up: every open connection the kernel
        follows neither in its socket table nor in the seeded map (refused by a
        full socket table, or its accept missed) is seeded, so it counts as open
        now and its close is counted when it comes.
        """
        started = time.monotonic()
        result = self._seed_from_snapshot(proc_root or self.attributor.proc_root, listeners=False)
        took = time.monotonic() - started
        m = self.metrics
        m.reconciliations += 1
        m.reconciled_connections += result["connections"]
        m.last_reconcile_s = took
        # Bounded cost: at most a tenth of the time goes to reconciling.
        self._next_reconcile = time.monotonic() + 10 * took
        log.info("reconciled with the kernel's socket list in %.3f s: %d open connections the socket table "
                 "could not follow are now counted", took, result["connections"])
        return result

    def _seed_from_snapshot(self, proc_root: str, listeners: bool) -> dict[str, int]:
        from tracer.probe import EdgeKey  # noqa: PLC0415 - keeps the import graph of tests small

        self.probe.set_seeding(True)
        snap = attribution.tcp_snapshot(proc_root)
        listener_pid: dict[tuple[int, int], tuple[int, str]] = {}
        by_port: dict[tuple[int, int], list] = {}
        for (netns, ip, port), (pid, comm, count) in snap.listeners.items():
            by_port.setdefault((netns, port), []).append((ip, pid, comm, count))
        seeded_listeners = 0
        for (netns, port), entries in by_port.items():
            ip, pid, comm, _ = entries[0]
            listener_pid[(netns, port)] = (pid, comm)
            if listeners and self.probe.seed_listener(netns, port, ip, pid, comm, sum(e[3] for e in entries)):
                seeded_listeners += 1
        # Read after the snapshot: a connection in the snapshot is either
        # followed by now, or closed meanwhile (and then in orphans below).
        tracked = self.probe.tracked_tuples() | self.probe.seeded_tuples()
        seeded: dict[tuple, Any] = {}
        skipped = 0
        for tup, owner in snap.connections.items():
            if tup in tracked:
                continue  # the kernel follows it already; it is counted
            netns, lip, lport, rip, rport = tup
            if (netns, lport) in listener_pid and any(
                    ip in (lip, "0.0.0.0", "::") for ip, *_ in by_port[(netns, lport)]):
                pid, comm = listener_pid[(netns, lport)]
                edge = EdgeKey(netns, pid, "inbound", lip, lport, rip, 0)
            else:
                pid = owner
                comm = self.attributor.process(owner)["comm"]
                edge = EdgeKey(netns, pid, "outbound", lip, 0, rip, rport)
            if not self.probe.seed_connection(tup, edge, comm):
                skipped += 1
                continue
            self.aggregator.seed(edge, 1, comm)
            seeded[tup] = edge
        self.probe.set_seeding(False)
        unseeded = 0
        for tup in self.probe.orphans():
            edge = seeded.get(tup)
            if edge is not None and self.probe.unseed(tup):
                self.aggregator.unseed(edge)
                unseeded += 1
        self.seed_failures += skipped  # reported with the other losses at the next drain
        return {"listeners": seeded_listeners, "connections": len(seeded) - unseeded}

    # -- each interval -------------------------------------------------------
    def _losses(self) -> dict[str, int]:
        """Cumulative kernel-side losses: failed map inserts by map, plus missed events and closes."""
        losses = dict(self.probe.drops())
        losses["seeded"] = self.seed_failures
        self._stats = self.probe.stats()
        losses["missed_events"] = self.probe.missed_events()
        losses["missed_closes"] = self._stats.get("missed_closes", 0)
        return losses

    def _report_losses(self, losses: dict[str, int]) -> None:
        """One warning per kind of loss, at most every WARN_EVERY_S, with the growth since the last one."""
        now = time.monotonic()
        for name, value in losses.items():
            warned = self._warned.get(name, (0, -WARN_EVERY_S))
            if value <= warned[0] or now - warned[1] < WARN_EVERY_S:
                continue
            what = LOSS_TEXT.get(name, "kernel map {name} full: {value} updates dropped so far")
            log.warning(what.format(name=name, value=value, new=value - warned[0],
                                    max_socks=getattr(self.probe, "max_socks", "?")))
            self._warned[name] = (value, now)

    def drain(self, interval_s: float) -> tuple[list[dict], list[dict]]:
        started = time.monotonic()
        losses = self._losses()
        # Sockets the kernel could not follow since the last reconciliation:
        # refused by the full socket table, or state changes it never saw.
        unfollowed = losses["socks"] + losses["missed_events"]
        if unfollowed > self._reconciled_at and started >= self._next_reconcile:
            self._reconciled_at = unfollowed
            self.reconcile()
            losses["seeded"] = self.seed_failures
        drained = self.probe.drain()
        if self.open_totals is not None:
            drained += self._open_totals(drained)
        # After the kernel's counters: every connect they hold has its
        # conntrack entry by now (made by the same SYN).
        translations = self._translations()
        counts = self.aggregator.apply(drained)
        now = time.time()
        conns, lis = aggregate.build_records(
            counts, self.probe.listeners(), ts=now, interval_s=max(1, round(interval_s)),
            dc=self.args.dc, host=self.args.host, host_ip=self.host_ip, attribute=self.attributor.attribute)
        followed = nat.apply(conns, translations)
        conns = followed.records
        self.metrics.nat["records_translated"] += followed.translated
        self.metrics.nat["translations"] += followed.translations
        conns = self._valid("connections", conns)
        lis = self._valid("listeners", lis)
        try:
            self.sink.send(conns, lis)
        except Exception as err:  # a sink bug must not stop tracing
            log.error("sink failed: %s", err)
            self.metrics.sink_errors += 1
        if conns and self.first_record_at is None:
            self.first_record_at = time.time()
        m = self.metrics
        m.intervals += 1
        m.edges_read += len(drained)
        m.records["connections"] += len(conns)
        m.records["listeners"] += len(lis)
        m.sink_errors = max(m.sink_errors, self.sink.errors)
        m.sink_dropped = self.sink.dropped
        m.queue_len = self.sink.queue_len
        m.open_connections = self.aggregator.open_total()
        self._report_losses(losses)
        m.map_drops = {k: v for k, v in losses.items() if k not in ("missed_events", "missed_closes")}
        m.missed_events = losses["missed_events"]
        m.missed_closes = losses["missed_closes"]
        stats = self._stats
        m.kernel_events = stats.get("events", 0)
        m.accepts_without_listener = stats.get("accept_no_listener", 0)
        m.handshake_clock_reads = stats.get("handshake_clock_reads", 0)
        m.last_drain_s = time.monotonic() - started
        m.last_drain_at = time.time()
        if m.intervals % 60 == 0:
            self.attributor.forget_dead()
        return conns, lis

    def _open_totals(self, drained: list) -> list:
        """What open connections carried since the last drain (``tracer/sockdiag.py``); none when that fails."""
        m = self.metrics.open_bytes
        try:
            extra = self.open_totals.adjust(drained)
        except (OSError, ValueError, LookupError) as err:
            m["errors"] += 1
            now = time.monotonic()
            if now - self._warned.get("open_bytes", (0, -WARN_EVERY_S))[1] >= WARN_EVERY_S:
                log.warning("reading open connections' totals failed (%s); their bytes count at their close", err)
                self._warned["open_bytes"] = (m["errors"], now)
            return []
        m.update({k: v for k, v in self.open_totals.stats.items() if k in m})
        return extra

    def _translations(self) -> tuple:
        """This interval's NAT translations; none when the reader is off or its drain failed."""
        if self.conntrack is None:
            return ()
        m = self.metrics.nat
        try:
            drain = self.conntrack.drain()
        except (OSError, ValueError) as err:
            m["errors"] += 1
            now = time.monotonic()
            if now - self._warned.get("nat", (0, -WARN_EVERY_S))[1] >= WARN_EVERY_S:
                log.warning("reading NAT translations failed (%s); this interval's connections to virtual "
                            "addresses keep their virtual address", err)
                self._warned["nat"] = (m["errors"], now)
            return ()
        m["dropped"] += drain.dropped
        m["truncated"] += int(drain.truncated)
        m["overruns"] += drain.overruns
        m["malformed"] += drain.malformed
        m["last_drain_s"] = drain.seconds
        if (drain.truncated or drain.overruns) and \
                time.monotonic() - self._warned.get("nat_loss", (0, -WARN_EVERY_S))[1] >= WARN_EVERY_S:
            log.warning("conntrack: %d entries not read so far (--nat-max-entries %d), %d event overruns; "
                        "connections of those entries keep their virtual address",
                        m["dropped"], self.conntrack.max_entries, m["overruns"])
            self._warned["nat_loss"] = (m["dropped"], time.monotonic())
        return drain.translations

    def _valid(self, kind: str, recs: list[dict]) -> list[dict]:
        good = []
        for rec in recs:
            try:
                records.validate(kind, rec)
                good.append(rec)
            except records.RecordError as err:
                self.invalid_records += 1
                log.error("dropping invalid %s record: %s", kind, err)
        return good

    def loop(self) -> None:
        interval = self.args.interval
        started = time.monotonic()
        deadline = started + self.args.duration if self.args.duration > 0 else None
        last = started
        next_tick = started + interval
        while True:
            wait = next_tick - time.monotonic()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            stopped = self.stop.wait(max(0.0, wait))
            self.metrics.wakeups += 1
            now = time.monotonic()
            if stopped or (deadline is not None and now >= deadline):
                self.drain(now - last)  # the last partial interval
                return
            self.drain(now - last)
            last = now
            next_tick += interval
            if next_tick < now:  # a drain overran: skip ticks rather than spin
                next_tick = now + interval

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        return {"mode": m.mode, "intervals": m.intervals, "wakeups": m.wakeups, "edges_read": m.edges_read,
                "records": dict(m.records), "map_drops": m.map_drops, "sink_errors": m.sink_errors,
                "sink_dropped": m.sink_dropped, "invalid_records": self.invalid_records,
                "kernel_events": m.kernel_events, "missed_events": m.missed_events,
                "missed_closes": m.missed_closes, "reconciliations": m.reconciliations,
                "reconciled_connections": m.reconciled_connections, "open_connections": m.open_connections,
                "nat": dict(m.nat), "open_bytes": dict(m.open_bytes)}


def run(args: argparse.Namespace) -> int:
    """Run the tracer until signalled or ``--duration``; returns the exit code."""
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.interval <= 0:
        print("phobos trace: --interval must be positive", file=sys.stderr)
        return EXIT_PREREQ
    problems = preflight.run_checks()
    if problems:
        print(preflight.format_problems(problems), file=sys.stderr)
        return EXIT_PREREQ
    catalog = None
    if args.catalog:
        try:
            catalog = _load_catalog(args.catalog)
        except ImportError as err:
            print(f"phobos trace: --catalog needs PyYAML and google-re2 (pip install PyYAML google-re2): {err}",
                  file=sys.stderr)
            return EXIT_PREREQ
        except Exception as err:
            print(f"phobos trace: cannot load catalog {args.catalog}: {err}", file=sys.stderr)
            return EXIT_PREREQ
    try:
        sink_factory(args.sink)  # an unknown scheme is reported before the slow compile
    except SinkError as err:
        print(f"phobos trace: {err}", file=sys.stderr)
        return EXIT_PREREQ
    from tracer.probe import Probe, ProbeError  # noqa: PLC0415 - BCC only when tracing

    try:
        probe = Probe(mode=args.mode, max_edges=args.max_edges, max_socks=args.max_socks)
    except ProbeError as err:
        print(f"phobos trace: cannot start tracing: {err}", file=sys.stderr)
        return EXIT_PREREQ
    # The sink starts after the probe: auto mode forks to try optional hooks,
    # and a sink may already run threads (librdkafka does).
    try:
        sink = make_sink(args.sink, host=args.host, token=TRACER_SETTINGS.value("TOKEN"),
                         max_queue=args.max_queue)
    except SinkError as err:
        print(f"phobos trace: {err}", file=sys.stderr)
        probe.close()
        return EXIT_PREREQ
    except Exception as err:  # a plug-in sink failing to start (missing library, bad URL)
        print(f"phobos trace: cannot open sink {args.sink}: {type(err).__name__}: {err}", file=sys.stderr)
        probe.close()
        return EXIT_PREREQ

    metrics = TracerMetrics(mode=probe.mode, interval_s=args.interval)
    reader = _open_conntrack(args) if args.nat else None
    server = None
    try:
        if args.metrics_port:
            try:
                server = MetricsServer(metrics, args.metrics_addr, args.metrics_port)
            except OSError as err:
                print(f"phobos trace: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {err}",
                      file=sys.stderr)
                return EXIT_PREREQ
        agent = Agent(args, probe, sink, attribution.Attributor(catalog=catalog, host=args.host), metrics,
                      conntrack=reader, open_totals=_open_totals(args, probe))
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, lambda *_: agent.stop.set())
            except ValueError:  # not the main thread
                pass
        agent.seed()
        log.info("tracing (mode %s), draining every %.3g s to %s%s", probe.mode, args.interval, args.sink,
                 ", following NAT" if reader is not None else "")
        try:
            agent.loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sink.flush()
        print("phobos-trace-summary " + json.dumps(agent.summary()), file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.close()
        if reader is not None:
            reader.close()
        sink.close()
        probe.close()


def _open_totals(args: argparse.Namespace, probe: Any) -> Any:
    """The reader of open connections' totals, or None (said once) with --no-open-bytes or when it cannot work."""
    if not args.open_bytes:
        return None
    from tracer.sockdiag import OpenTotals, SockDiag  # noqa: PLC0415 - only when open connections are read

    try:
        return OpenTotals(probe.followed_sockets, SockDiag())
    except OSError as err:
        log.warning("bytes of open connections not read (%s): they count at their close", err)
        return None


def _open_conntrack(args: argparse.Namespace) -> Any:
    """The conntrack reader of ``--nat-netns``, or None (said once) when it cannot be opened."""
    from tracer.conntrack import ConntrackReader  # noqa: PLC0415 - only when NAT is followed

    try:
        return ConntrackReader(args.nat_netns or None, max_entries=args.nat_max_entries).open()
    except (OSError, ValueError) as err:
        log.warning("not following NAT: connection tracking%s cannot be read (%s); clients of ClusterIPs, "
                    "NodePorts and published ports are reported with the virtual address they connected to. "
                    "Run the tracer as root (CAP_NET_ADMIN) in the host's network namespace, with "
                    "nf_conntrack loaded, or pass --no-nat", f" of {args.nat_netns}" if args.nat_netns else "",
                    err)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phobos trace", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:  # before the signal handlers are in place (BPF compile)
        print("phobos trace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
