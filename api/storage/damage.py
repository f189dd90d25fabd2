"""Damage in the store that ClickHouse survives quietly, made loud.

Two kinds, both measured on chDB 26.9 (whose own log is off: ``logger.level``
is ``fatal`` and ``logger.log`` empty, so nothing it notices reaches a person):

* **Broken data parts.** A part whose files do not match its checksums (a
  truncated ``data.bin``, say) is moved at start-up to
  ``detached/broken-on-start_<part>``; the table opens without its rows and
  every query succeeds. ``system.detached_parts`` tells the truth (table,
  part, ``reason``); ``system.errors`` keeps the last cause per error code
  (``BAD_SIZE_OF_FILE_IN_DATA_PART: .../data.bin has unexpected size``). The
  part's own ``count.txt`` and ``minmax_ts.idx`` still say how many rows and
  which time range were lost.
* **A damaged deduplication log.** Tables with
  ``non_replicated_deduplication_window`` keep the block ids of recent
  inserts in ``<table>/deduplication_logs/deduplication_log_N.txt``, one
  record a line: ``<op>\\t<part name>\\t<block id>\\n``. ClickHouse reads the
  file at start-up, stops at the first record it cannot parse, and only
  counts an error in ``system.errors`` (``CANNOT_PARSE_INPUT_ASSERTION_FAILED``,
  no table, no path): every record from there on is forgotten, so a replay
  of those batches is stored twice in the raw table while the rollups (their
  own logs intact) drop it - raw and rollup totals then disagree. It also
  keeps appending to the damaged file, so the next record is glued to the
  broken line and lost at the next start too. No system table names the
  file, so this module parses the logs with ClickHouse's grammar itself.

``check_store`` returns a ``DamageReport``; ``DamageMonitor`` keeps the
current one per store for ``/readyz`` and ``/metrics`` and logs it when it
changes. The deduplication logs are read once per process (ClickHouse reads
them once, at start-up, so later changes to the files do not change what it
deduplicates); detached parts are read again every ``max_age`` seconds.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from api.storage.interface import Store

__all__ = [
    "DAMAGE_REASONS",
    "DetachedPart",
    "DedupLogDamage",
    "DamageReport",
    "check_store",
    "check_dedup_log",
    "DamageMonitor",
    "MONITOR",
    "check_at_start",
    "RECOVERY_HINT",
]

log = logging.getLogger("phobos.store")

#: ``system.detached_parts.reason`` values that mean ClickHouse took data away
#: by itself. An empty reason is a part a person detached on purpose
#: (``ALTER TABLE ... DETACH PART``); ``ignored``/``clone``/``attaching``/
#: ``deleting``/``tmp-fetch`` are ClickHouse's own housekeeping.
DAMAGE_REASONS = frozenset(
    {"broken", "broken-on-start", "broken-from-backup", "unexpected", "covered-by-broken", "noquorum"}
)

RECOVERY_HINT = "see README 'Store damage' for how to inspect and recover"

_PART_NAME = re.compile(r"^.+_(\d+)_(\d+)_(\d+)(?:_(\d+))?$")
_WINDOW = re.compile(r"non_replicated_deduplication_window\s*=\s*(\d+)")
_LOG_FILE = re.compile(r"^deduplication_log_(\d+)\.txt$")


@dataclass(frozen=True)
class DetachedPart:
    """One row of ``system.detached_parts``, with what the part's files tell."""

    table: str
    name: str
    reason: str
    path: str
    rows: int | None = None  # from the part's count.txt, when readable here
    ts_min: str | None = None  # from minmax_ts.idx (tables partitioned by ts)
    ts_max: str | None = None
    cause: str | None = None  # ClickHouse's last error naming this part, if any

    @property
    def damaged(self) -> bool:
        return self.reason in DAMAGE_REASONS

    def describe(self) -> str:
        text = f"{self.table}: part {self.name} was detached by ClickHouse ({self.reason})"
        if self.rows is not None:
            text += f", {self.rows} rows no longer visible"
        if self.ts_min and self.ts_max:
            text += f" (ts {self.ts_min} .. {self.ts_max})"
        if self.cause:
            text += f"; cause: {self.cause}"
        return text


@dataclass(frozen=True)
class DedupLogDamage:
    """A deduplication log file that ClickHouse could not read to its end."""

    table: str
    file: str
    line: int  # first line ClickHouse cannot parse (1-based)
    problem: str
    records_lost: int  # lines from there to the end: not loaded, so not deduplicated

    def describe(self) -> str:
        return (f"{self.table}: deduplication log {self.file} is damaged at line {self.line} "
                f"({self.problem}); ClickHouse ignored {self.records_lost} record(s) from there on, "
                f"so replays of those batches are stored twice")


@dataclass
class DamageReport:
    """What one check found; ``damaged`` is what readiness and alerts look at."""

    detached: list[DetachedPart] = field(default_factory=list)
    dedup_logs: list[DedupLogDamage] = field(default_factory=list)
    dedup_logs_checked: bool = False  # False for a server store: its files are not here
    problems: list[str] = field(default_factory=list)  # checks that could not run
    checked_at: float = field(default_factory=time.time)

    @property
    def broken_parts(self) -> list[DetachedPart]:
        return [part for part in self.detached if part.damaged]

    @property
    def damaged(self) -> bool:
        return bool(self.broken_parts or self.dedup_logs)

    def reasons(self) -> list[str]:
        return [p.describe() for p in self.broken_parts] + [d.describe() for d in self.dedup_logs]

    def as_dict(self) -> dict[str, Any]:
        return {
            "broken_parts": [{k: v for k, v in asdict(p).items() if v is not None} for p in self.broken_parts],
            "deduplication_logs": [asdict(d) for d in self.dedup_logs],
        }

    def key(self) -> tuple:
        """What identifies the damage, for logging only when it changes."""
        return (tuple((p.table, p.name) for p in self.broken_parts),
                tuple((d.table, d.file, d.line) for d in self.dedup_logs), tuple(self.problems))


# -- deduplication logs -------------------------------------------------------


def check_dedup_log(data: bytes) -> tuple[int, str, int] | None:
    """Where ClickHouse's reader would stop in one deduplication log file.

    Mirrors ``MergeTreeDeduplicationLog::loadSingleLog``: records are
    ``<uint8 op>\\t<part name>\\t<block id>\\n`` read one after the other,
    the part name must parse as a part name, and the first failure ends the
    file. Returns ``(line, problem, records_lost)`` or None for a good file.
    """
    if not data:
        return None
    lines = data.split(b"\n")
    complete = lines[:-1]
    tail = lines[-1]  # b"" when the file ends with a newline
    total = len(complete) + (1 if tail else 0)
    for number, raw in enumerate(complete + ([tail] if tail else []), start=1):
        problem = _record_problem(raw)
        if problem is None and number > len(complete):
            problem = "the last record has no end of line (file cut short)"
        if problem is not None:
            return number, problem, total - number + 1
    return None


def _record_problem(raw: bytes) -> str | None:
    fields = raw.split(b"\t")
    if len(fields) != 3:
        return f"{len(fields)} tab-separated fields instead of 3"
    op, part, block = fields
    if not op.isdigit() or int(op) > 255:
        return f"operation {op[:20]!r} is not a number"
    try:
        name = part.decode()
    except UnicodeDecodeError:
        return "the part name is not text"
    match = _PART_NAME.match(name)
    if not match or int(match.group(1)) > int(match.group(2)):
        return f"{name[:60]!r} is not a part name"
    if not block:
        return "empty block id"
    return None


def _dedup_damage(tables: list[dict[str, Any]]) -> list[DedupLogDamage]:
    found = []
    for table in tables:
        window = _WINDOW.search(table.get("engine_full") or "")
        if not window or int(window.group(1)) == 0:
            continue
        for data_path in table.get("data_paths") or []:
            logs = Path(data_path) / "deduplication_logs"
            files = sorted((int(m.group(1)), p) for p in (logs.iterdir() if logs.is_dir() else [])
                           if (m := _LOG_FILE.match(p.name)))
            for _, path in files:
                try:
                    result = check_dedup_log(path.read_bytes())
                except OSError as err:
                    result = (1, f"cannot be read: {err.strerror}", 0)
                if result:
                    line, problem, lost = result
                    found.append(DedupLogDamage(table["name"], str(path), line, problem, lost))
            if not files and table.get("active_parts"):
                found.append(DedupLogDamage(
                    table["name"], str(logs), 0,
                    "the deduplication log is missing while the table holds data", 0))
    return found


# -- detached parts -----------------------------------------------------------


def _part_facts(path: str) -> dict[str, Any]:
    """Rows and time range of a detached part, from its small text/index files."""
    facts: dict[str, Any] = {}
    base = Path(path)
    try:
        facts["rows"] = int((base / "count.txt").read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        raw = (base / "minmax_ts.idx").read_bytes()
        if len(raw) == 8:  # DateTime: two little-endian UInt32, min and max
            lo, hi = struct.unpack("<II", raw)
            fmt = "%Y-%m-%d %H:%M:%S"
            facts["ts_min"] = datetime.fromtimestamp(lo, timezone.utc).strftime(fmt)
            facts["ts_max"] = datetime.fromtimestamp(hi, timezone.utc).strftime(fmt)
    except OSError:
        pass
    return facts


def _causes(store: Store) -> list[str]:
    try:
        return [row[0] for row in store.query("SELECT last_error_message FROM system.errors")]
    except Exception:
        return []


def _detached(store: Store) -> list[DetachedPart]:
    rows = store.query_dicts(
        "SELECT table, name, reason, path FROM system.detached_parts WHERE database = {db:String} "
        "ORDER BY table, name",
        {"db": store.db},
    )
    causes = _causes(store) if any(r["reason"] in DAMAGE_REASONS for r in rows) else []
    parts = []
    for row in rows:
        reason = row["reason"] or ""
        original = row["name"][len(reason) + 1:] if reason and row["name"].startswith(reason + "_") else row["name"]
        cause = next((c for c in causes if f"/{original}/" in c), None)
        if cause:
            cause = cause.split(": columns:", 1)[0][:300]
        facts = _part_facts(row["path"]) if row["path"] and os.path.isdir(row["path"]) else {}
        parts.append(DetachedPart(row["table"], row["name"], reason, row["path"], cause=cause, **facts))
    return parts


# -- the check ---------------------------------------------------------------


def check_store(store: Store, dedup_logs: bool = True) -> DamageReport:
    """Look for broken parts and damaged deduplication logs in ``store.db``.

    Never raises for a store that answers: a check that cannot run is listed
    in ``problems``. The deduplication logs are only checked for an embedded
    (chDB) store, whose files are on this machine.
    """
    report = DamageReport()
    try:
        report.detached = _detached(store)
    except Exception as err:
        report.problems.append(f"system.detached_parts could not be read: {err}")
    url = getattr(store, "url", None)
    if dedup_logs and getattr(url, "scheme", None) == "chdb":
        try:
            tables = store.query_dicts(
                "SELECT name, engine_full, data_paths FROM system.tables "
                "WHERE database = {db:String} AND engine LIKE '%MergeTree' ORDER BY name",
                {"db": store.db},
            )
            active = dict(store.query(
                "SELECT table, count() FROM system.parts WHERE database = {db:String} AND active "
                "GROUP BY table",
                {"db": store.db},
            ))
            for table in tables:
                table["active_parts"] = active.get(table["name"], 0)
            report.dedup_logs = _dedup_damage(tables)
            report.dedup_logs_checked = True
        except Exception as err:
            report.problems.append(f"the deduplication logs could not be checked: {err}")
    return report


class DamageMonitor:
    """The current ``DamageReport`` of each store, refreshed at most every ``max_age`` s.

    The deduplication-log part of the first check is kept for the life of
    the process (see the module docstring); detached parts are re-read.
    Every change is logged: damage at ERROR with the way to recover, its
    disappearance at INFO.
    """

    def __init__(self, max_age: float = 15.0):
        self.max_age = max_age
        self._lock = threading.Lock()
        self._reports: dict[tuple, DamageReport] = {}
        self._logged: dict[tuple, tuple] = {}

    @staticmethod
    def _store_key(store: Store) -> tuple:
        url = getattr(store, "url", None)
        return (getattr(url, "scheme", ""), getattr(url, "path", "") or getattr(url, "host", ""), store.db)

    def report(self, store: Store, max_age: float | None = None) -> DamageReport:
        key = self._store_key(store)
        age = self.max_age if max_age is None else max_age
        with self._lock:
            last = self._reports.get(key)
            if last is not None and time.time() - last.checked_at < age:
                return last
            fresh = check_store(store, dedup_logs=last is None)
            if last is not None:
                fresh.dedup_logs = last.dedup_logs
                fresh.dedup_logs_checked = last.dedup_logs_checked
            self._reports[key] = fresh
            self._log(key, store, fresh)
            return fresh

    def forget(self, store: Store) -> None:
        with self._lock:
            key = self._store_key(store)
            self._reports.pop(key, None)
            self._logged.pop(key, None)

    def _log(self, key: tuple, store: Store, report: DamageReport) -> None:
        before = self._logged.get(key)
        now = report.key()
        if before == now:
            return
        self._logged[key] = now
        where = f"{store.url.redacted()} database {store.db}" if hasattr(store, "url") else store.db
        for problem in report.problems:
            log.warning("store damage check incomplete for %s: %s", where, problem)
        if report.damaged:
            for reason in report.reasons():
                log.error("store damage in %s: %s", where, reason)
            log.error("store %s is degraded: %s", where, RECOVERY_HINT)
        elif before is not None and (before[0] or before[1]):
            log.info("store %s: no damage found any more", where)


#: The process-wide monitor used by ``/readyz`` and ``/metrics``.
MONITOR = DamageMonitor()


def check_at_start(store: Store) -> DamageReport:
    """Run the first check now (logging any damage); call it right after opening the store."""
    return MONITOR.report(store, max_age=0)
