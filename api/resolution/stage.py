"""The resolution stage: endpoint rows become client -> server edges once, as minutes close.

What it does: for every minute that has settled (``settle_s`` after its
end, so that other hosts' records and listeners have arrived), it runs the
resolution of ``tcp.py`` (remote ip:port -> the listener that owned it
at that minute; untraced clients from the servers' inbound records; an edge
seen from both ends counted once) and writes the result into
``resolved_1m``, from which views roll it up into ``resolved_svc_1m`` and
``resolved_svc_1h`` (``sql/003_resolved.sql``). Views then read thousands of
resolved rows instead of resolving millions of raw ones per request.

How it finds work: ``minute_marks`` counts, per minute, the raw records
every ingest path has stored (filled by views, so the Kafka engine tables
count too, and replays - dropped by their deduplication token - do not).
``resolved_minutes`` keeps what each minute was resolved from. A minute is
resolved when it has marks and no resolution, and resolved again when more
records reached it since (Kafka lag, a spool replayed hours later), or more
listener records reached it or the ``slack`` before it. The newest minutes
go first, so live views catch up before an old back-fill is done.

How a minute is replaced: one insert holds the negation of what the stage
wrote for the minute before and the new rows; the tables sum, so readers
see either resolution, never neither, and late data gives the same rows as
resolving everything fresh.

Calls from trace spans (``traces.py``) are linked the same way, on
their own marks: ``span_marks`` counts the spans of each minute and how
far they reach, ``resolved_call_minutes`` what each minute was linked
from. A minute that gets spans is linked again together with the minutes
its spans reach (a late parent gives its children a caller) and the
minutes of the parents of its spans (a late child answers its parent's
call, which then no longer counts as unanswered). Calls are kept apart
from the TCP rows, so a minute that gets TCP records hours later, when its
spans may have expired, keeps its calls.

Cost: one query per run of up to ``batch`` consecutive minutes. Caveat: a
minute is read as resolved once it has been, so between late rows arriving
and their re-resolution (one ``period_s``) a view shows it as it was.

One stage per store: in embedded mode it runs inside the process that owns
the store; ``phobos resolve`` runs it on its own for a ClickHouse server,
where a second copy takes a lease row before each round and stands by while
another holds it (``LEASE_S``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from api.resolution.tcp import Window, resolved_sql
from api.resolution.traces import link_calls, spans_of_traces
from api.storage import Store

__all__ = ["Resolver", "ResolutionProgress", "SETTLE_S"]

log = logging.getLogger("phobos.resolution")

#: A minute is resolved this long after it ends: tracers report every 10 s
#: and a listener may arrive from another host a little after its clients.
SETTLE_S = 90
#: A server mode stage holds its lease this long without renewing it.
LEASE_S = 60
#: How far after a span's start its children are looked for when it arrives
#: late: to its end, but no further than this (seconds).
SPAN_REACH_S = 3600


@dataclass
class ResolutionProgress:
    """What ``/metrics`` and ``/readyz`` say about the stage."""

    running: bool = False
    pending: int = 0
    pending_calls: int = 0
    resolved_minutes: int = 0
    linked_minutes: int = 0
    rounds: int = 0
    last_round_s: float = 0.0
    last_minute_s: float = 0.0
    last_resolved: int = 0
    errors: int = 0
    last_error: str = ""
    standing_by: bool = False
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Resolver:
    """Resolves settled minutes of one store (see the module docstring).

    Parameters
    ----------
    store : Store (migrated).
    settle_s : seconds after a minute's end before it is resolved.
    slack : seconds a listener is believed after its last report
        (``PHOBOS_LISTENER_SLACK``; the same as the views').
    batch : most minutes one query resolves.
    period_s : pause between rounds when there is nothing to do.
    lease : take a lease before each round (server mode, where more than one
        stage could run against the same store); None: for a ClickHouse server,
        not for the embedded store, which one process owns.
    now : clock, for tests.
    """

    def __init__(self, store: Store, settle_s: float = SETTLE_S, slack: int = 600, batch: int = 15,
                 period_s: float = 5.0, lease: bool | None = None, now: Callable[[], float] = time.time):
        self.store = store
        self.settle_s = settle_s
        self.slack = slack
        self.batch = max(1, batch)
        self.period_s = period_s
        self.lease = store.url.scheme != "chdb" if lease is None else lease
        self.now = now
        self.progress = ResolutionProgress()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, store: Store, cfg: dict[str, Any], settle_s: float | None = None) -> "Resolver":
        """A stage with the settle delay and listener slack of ``api.config`` (``settle_s`` overrides)."""
        return cls(store, settle_s=cfg["RESOLVE_SETTLE"] if settle_s is None else settle_s,
                   slack=cfg["LISTENER_SLACK"])

    # -- what to do -------------------------------------------------------------
    def seed_marks(self) -> int:
        """Count the records stored before ``minute_marks`` existed (a store
        migrated from an older schema), once: minutes without marks get
        them from the rollup. Returns the minutes it marked."""
        db = self.store.db
        if self.store.query(f"SELECT count() FROM {db}.resolved_minutes")[0][0]:
            return 0
        before = self.store.query(f"SELECT uniqExact(ts) FROM {db}.minute_marks")[0][0]
        self.store.execute(
            f"INSERT INTO {db}.minute_marks (ts, records, listener_records) "
            f"SELECT ts, sum(records), 0 FROM {db}.edges_1m "
            f"WHERE ts NOT IN (SELECT ts FROM {db}.minute_marks) GROUP BY ts")
        self.store.execute(
            f"INSERT INTO {db}.minute_marks (ts, records, listener_records) "
            f"SELECT toStartOfMinute(ts) AS m, 0, count() FROM {db}.listeners "
            f"WHERE m NOT IN (SELECT ts FROM {db}.minute_marks) GROUP BY m")
        return self.store.query(f"SELECT uniqExact(ts) FROM {db}.minute_marks")[0][0] - before

    def _settled(self) -> int:
        """The start of the last minute that has settled (epoch seconds)."""
        return int(self.now() - self.settle_s) // 60 * 60 - 60

    def pending(self) -> list[int]:
        """Minutes (epoch seconds) to resolve now, newest first."""
        db = self.store.db
        cut = self._settled()
        rows = self.store.query(
            f"""SELECT toUInt32(m.ts), m.r, m.l, r.found, r.records, r.lrec
                FROM (SELECT ts, sum(records) AS r, sum(listener_records) AS l FROM {db}.minute_marks
                      WHERE ts <= toDateTime({{cut:UInt32}}, 'UTC') GROUP BY ts) AS m
                LEFT JOIN (SELECT ts, 1 AS found, argMax(records, generation) AS records,
                                  argMax(listener_records, generation) AS lrec
                           FROM {db}.resolved_minutes GROUP BY ts) AS r ON r.ts = m.ts
                WHERE r.found = 0 OR m.r > r.records OR m.l > r.lrec""",
            {"cut": max(cut, 0)})
        todo: set[int] = set()
        marked = {int(ts) for ts, *_ in rows}
        for ts, records, listeners, found, done_records, done_listeners in rows:
            ts = int(ts)
            todo.add(ts)  # also a minute of listeners only: nothing to draw, but it has settled
            if found and listeners > done_listeners:
                # New listener rows change how the minutes after them resolve too: up to
                # the slack after them, and to the end of their hour (a listener span is
                # an hour with its first and last sighting).
                reach = max(ts + self.slack, ts // 3600 * 3600 + 3600 - 60)
                todo.update(range(ts + 60, min(reach, cut) + 1, 60))
        if len(todo) > len(marked):
            # Only minutes that hold records need their edges again.
            have = {int(r[0]) for r in self.store.query(
                f"SELECT DISTINCT toUInt32(ts) FROM {db}.resolved_minutes WHERE has({{m:Array(UInt32)}}, toUInt32(ts))",
                {"m": sorted(todo - marked)})}
            todo = (todo & marked) | have
        return sorted(todo, reverse=True)

    # -- doing it ---------------------------------------------------------------
    def resolve(self, minutes: list[int]) -> int:
        """Resolve ``minutes`` (epoch seconds, any order); returns how many were resolved."""
        done = 0
        for first, last in _runs(sorted(set(minutes)), self.batch):
            started = time.perf_counter()
            self._resolve_run(first, last)
            done += (last - first) // 60 + 1
            self.progress.last_minute_s = (time.perf_counter() - started) / ((last - first) // 60 + 1)
        return done

    def _resolve_run(self, first: int, last: int) -> None:
        db = self.store.db
        win = Window(first, last + 60)
        params = {"t0": win.start, "t1": win.end, "slack": int(self.slack)}
        # What the resolution reads, counted before it reads: rows that land
        # meanwhile make the count short, and the minute comes round again.
        counts = dict(self.store.query(
            f"SELECT toUInt32(ts), sum(records) FROM {db}.edges_1m "
            f"WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC') GROUP BY ts",
            params))
        listeners = dict(self.store.query(
            f"SELECT toUInt32(ts), sum(listener_records) FROM {db}.minute_marks "
            f"WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC') GROUP BY ts",
            params))
        keys = "ts, s_kind, s_name, s_dc, s_inst, d_kind, d_name, d_dc, d_inst, d_port"
        fresh = resolved_sql(db, win, catalog=False)
        health = "handshakes, handshake_us_sum, handshake_hist, retransmits, aborts"
        self.store.execute(
            f"""INSERT INTO {db}.resolved_1m ({keys}, n, open_seconds, connects, failures, bytes, {health})
                SETTINGS max_insert_block_size = 100000000, min_insert_block_size_rows = 100000000,
                         min_insert_block_size_bytes = 0
                SELECT {keys}, n, os, cn, fl, bt, hs, hu, arrayReduce('sumForEachState', [hh]), rt, ab FROM (
                  SELECT ts,
                         CAST(if(s_kind = 'service', 'service', 'addr') AS Enum8('service' = 1, 'addr' = 2)) AS s_kind,
                         if(s_kind = 'service', s_name, '') AS s_name, s_dc, s_inst,
                         CAST(if(d_kind = 'service', 'service', 'addr') AS Enum8('service' = 1, 'addr' = 2)) AS d_kind,
                         if(d_kind = 'service', d_name, '') AS d_name, d_dc, d_inst, d_port,
                         toInt64(1) AS n, toInt64(sum(os)) AS os, toInt64(sum(cn)) AS cn,
                         toInt64(sum(fl)) AS fl, toInt64(sum(bt)) AS bt,
                         toInt64(sum(hs)) AS hs, toInt64(sum(hu)) AS hu, sumForEach(hh) AS hh,
                         toInt64(sum(rt)) AS rt, toInt64(sum(ab)) AS ab
                  FROM ({fresh})
                  GROUP BY ts, s_kind, s_name, s_dc, s_inst, d_kind, d_name, d_dc, d_inst, d_port
                  UNION ALL
                  -- withdraw what this stage wrote for these minutes before
                  SELECT {keys}, -sum(n) AS was_n, -sum(open_seconds) AS was_os, -sum(connects) AS was_cn,
                         -sum(failures) AS was_fl, -sum(bytes) AS was_bt,
                         -sum(handshakes), -sum(handshake_us_sum),
                         arrayMap(x -> -x, sumForEachMerge(handshake_hist)),
                         -sum(retransmits), -sum(aborts)
                  FROM {db}.resolved_1m
                  WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC')
                  GROUP BY {keys}
                  HAVING sum(n) != 0 OR sum(open_seconds) != 0 OR sum(connects) != 0
                         OR sum(failures) != 0 OR sum(bytes) != 0 OR sum(handshakes) != 0
                         OR sum(handshake_us_sum) != 0 OR sum(retransmits) != 0 OR sum(aborts) != 0
                )""",
            params)
        generation = time.time_ns()
        self.store.insert_rows("resolved_minutes", [
            {"ts": t, "records": int(counts.get(t, 0)), "listener_records": int(listeners.get(t, 0)),
             "generation": generation, "resolved_at": int(time.time())}
            for t in range(first, last + 60, 60)])
        self.progress.resolved_minutes += (last - first) // 60 + 1
        self.progress.last_resolved = max(self.progress.last_resolved, last)

    # -- calls from trace spans -------------------------------------------------
    def seed_calls(self) -> int:
        """Carry the calls of a store written before spans were kept
        (``trace_edges``) into ``resolved_calls_1m``, once. Returns the rows."""
        db = self.store.db
        if self.store.query(f"SELECT count() FROM {db}.resolved_call_minutes")[0][0]:
            return 0
        rows = self.store.query(
            f"SELECT toUInt32(ts), parent_service, child_service, sum(calls), sum(errors), sum(duration_us_sum) "
            f"FROM {db}.trace_edges GROUP BY ts, parent_service, child_service")
        if not rows:
            return 0
        self.store.insert_rows("resolved_calls_1m", [
            {"ts": ts, "caller": a, "callee": b, "n": 1, "calls": n, "errors": e, "duration_us": d}
            for ts, a, b, n, e, d in rows])
        generation = time.time_ns()
        self.store.insert_rows("resolved_call_minutes", [
            {"ts": ts, "spans": 0, "generation": generation, "resolved_at": int(time.time())}
            for ts in sorted({r[0] for r in rows})])
        return len(rows)

    def pending_calls(self) -> list[int]:
        """Minutes whose calls to link now, newest first."""
        db = self.store.db
        cut = self._settled()
        rows = self.store.query(
            f"""SELECT toUInt32(m.ts), toUInt32(m.reach)
                FROM (SELECT ts, sum(spans) AS n, max(reach) AS reach FROM {db}.span_marks
                      WHERE ts <= toDateTime({{cut:UInt32}}, 'UTC') GROUP BY ts) AS m
                LEFT JOIN (SELECT ts, 1 AS found, argMax(spans, generation) AS n
                           FROM {db}.resolved_call_minutes GROUP BY ts) AS r ON r.ts = m.ts
                WHERE r.found = 0 OR m.n > r.n""",
            {"cut": max(cut, 0)})
        if not rows:
            return []
        changed = sorted(int(ts) for ts, _ in rows)
        todo = set(changed)
        for ts, reach in rows:
            # a minute past the spans' end: hosts' clocks disagree a little
            todo.update(range(int(ts) + 60, min(int(reach) + 60, int(ts) + SPAN_REACH_S, cut) + 1, 60))
        # The minutes of these spans' parents (and of the client halves of
        # shared spans): their calls may now be answered.
        todo.update(int(r[0]) for r in self.store.query(
            f"""SELECT DISTINCT toUInt32(toStartOfMinute(ts)) FROM {db}.spans
                WHERE (trace_id, span_id) IN (
                  SELECT trace_id, arrayJoin([span_id, parent_id]) FROM {db}.spans
                  WHERE ts >= toDateTime({{lo:UInt32}}, 'UTC') AND ts < toDateTime({{hi:UInt32}}, 'UTC')
                    AND has({{m:Array(UInt32)}}, toUInt32(toStartOfMinute(ts))))""",
            {"lo": changed[0], "hi": changed[-1] + 60, "m": changed}))
        todo = {t for t in todo if t <= cut}
        extra = sorted(todo - set(changed))
        if extra:
            # Only minutes that hold spans have calls to link.
            marked = {int(r[0]) for r in self.store.query(
                f"SELECT DISTINCT toUInt32(ts) FROM {db}.span_marks WHERE has({{m:Array(UInt32)}}, toUInt32(ts))",
                {"m": extra})}
            todo = set(changed) | marked
        return sorted(todo, reverse=True)

    def resolve_calls(self, minutes: list[int]) -> int:
        """Link the calls of ``minutes`` (epoch seconds, any order); returns how many were linked."""
        done = 0
        for first, last in _runs(sorted(set(minutes)), self.batch):
            self._link_run(first, last)
            done += (last - first) // 60 + 1
        return done

    def _link_run(self, first: int, last: int) -> None:
        db = self.store.db
        params = {"t0": first, "t1": last + 60}
        rng = "ts >= toDateTime({t0:UInt32}, 'UTC') AND ts < toDateTime({t1:UInt32}, 'UTC')"
        # Counted before reading, as for TCP rows: spans landing meanwhile come round again.
        counts = dict(self.store.query(
            f"SELECT toUInt32(ts), sum(spans) FROM {db}.span_marks WHERE {rng} GROUP BY ts", params))
        links = link_calls(spans_of_traces(self.store, first, last + 60), first, last + 60)
        rows = [{"ts": ts, "caller": a, "callee": b, "n": 1, "calls": n, "errors": e, "duration_us": d}
                for (ts, a, b), (n, e, d) in sorted(links.items())]
        # withdraw what this stage wrote for these minutes before, in the same insert
        rows += [{"ts": int(ts), "caller": a, "callee": b, "n": -n, "calls": -c, "errors": -e, "duration_us": -d}
                 for ts, a, b, n, c, e, d in self.store.query(
                     f"SELECT toUInt32(ts), caller, callee, sum(n), sum(calls), sum(errors), sum(duration_us) "
                     f"FROM {db}.resolved_calls_1m WHERE {rng} GROUP BY ts, caller, callee "
                     f"HAVING sum(n) != 0 OR sum(calls) != 0 OR sum(errors) != 0 OR sum(duration_us) != 0",
                     params)]
        if rows:
            self.store.insert_rows("resolved_calls_1m", rows)
        generation = time.time_ns()
        self.store.insert_rows("resolved_call_minutes", [
            {"ts": t, "spans": int(counts.get(t, 0)), "generation": generation, "resolved_at": int(time.time())}
            for t in range(first, last + 60, 60)])
        self.progress.linked_minutes += (last - first) // 60 + 1

    # -- server mode: one stage at a time ----------------------------------------
    def _hold_lease(self) -> bool:
        """Whether this stage may run a round: it holds the newest unexpired lease."""
        db = self.store.db
        now = self.now()
        now_ms = int(now * 1000)
        live = (f"SELECT holder FROM {db}.resolver_lease GROUP BY holder "
                f"HAVING max(expires_ms) > {{now:UInt64}} ORDER BY min(taken_ms), holder LIMIT 1")
        rows = self.store.query(live, {"now": now_ms})
        if rows and rows[0][0] != self.holder:
            return False
        self.store.insert_rows("resolver_lease", [{"holder": self.holder, "taken_ms": now_ms,
                                                   "expires_ms": now_ms + LEASE_S * 1000}])
        # Two stages that took a lease at once both see both now: the earlier wins,
        # and keeps its first sighting while it renews.
        rows = self.store.query(live, {"now": now_ms})
        return bool(rows) and rows[0][0] == self.holder

    # -- running -----------------------------------------------------------------
    def run_once(self, budget_s: float = 30.0) -> int:
        """One round: resolve what is pending, newest first, for at most ``budget_s``."""
        started = time.perf_counter()
        if self.lease and not self._hold_lease():
            self.progress.standing_by = True
            return 0
        self.progress.standing_by = False
        if not self.progress.rounds:
            seeded = self.seed_marks()
            if seeded:
                log.info("resolution: %d minutes stored before the stage existed will be back-filled", seeded)
            if self.seed_calls():
                log.info("resolution: calls linked before spans were kept carried over from trace_edges")
        todo = self.pending()
        calls = self.pending_calls()
        self.progress.pending, self.progress.pending_calls = len(todo), len(calls)
        done = 0
        while (todo or calls) and time.perf_counter() - started < budget_s:
            if todo:
                chunk, todo = todo[:self.batch * 4], todo[self.batch * 4:]
                done += self.resolve(chunk)
            if calls:
                chunk, calls = calls[:self.batch * 4], calls[self.batch * 4:]
                done += self.resolve_calls(chunk)
            self.progress.pending, self.progress.pending_calls = len(todo), len(calls)
        self.progress.rounds += 1
        self.progress.last_round_s = time.perf_counter() - started
        return done

    def run(self, stop: threading.Event | None = None) -> None:
        """Rounds until ``stop`` is set; errors are counted and logged, never fatal."""
        stop = stop or self._stop
        self.progress.running = True
        try:
            while not stop.is_set():
                try:
                    done = self.run_once()
                except Exception as err:  # the store may be down for a while: keep trying
                    self.progress.errors += 1
                    self.progress.last_error = str(err)[:500]
                    log.warning("resolution round failed: %s", err)
                    done = 0
                if not done:
                    stop.wait(self.period_s)
                elif self.progress.pending:
                    log.info("resolution: %d minutes to go", self.progress.pending)
        finally:
            self.progress.running = False

    def start(self) -> "Resolver":
        """Run in a background thread (embedded mode)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="phobos-resolution", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the background thread; whether it still runs."""
        thread = self._thread
        if thread is None:
            return False
        thread.join(timeout_s)
        return thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def _runs(minutes: list[int], batch: int) -> list[tuple[int, int]]:
    """Sorted minutes as runs of consecutive minutes, each at most ``batch`` long."""
    runs: list[tuple[int, int]] = []
    for ts in minutes:
        if runs and ts == runs[-1][1] + 60 and (ts - runs[-1][0]) // 60 < batch:
            runs[-1] = (runs[-1][0], ts)
        else:
            runs.append((ts, ts))
    return runs
