"""Validated, idempotent ingestion of record batches into a store.

Every path by which records reach ClickHouse through Python - the API's
ingest endpoint (tracer http sink), ``phobos load`` (JSON lines from a file
or a pipe) and the Kafka consumer - goes through ``ingest_batch``:

1. each record is checked against the contract (``tracer.records``); bad
   ones are refused with a reason, stored in ``dead_letters`` and counted,
   while the good ones in the same batch still land;
2. the good records are inserted with a deduplication token derived from the
   batch id (or, without one, from the batch content: two identical batches
   from one host for one interval are the same batch delivered twice), so
   at-least-once delivery never doubles what the rollups report.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from tracer.records import RECORD_FIELDS, Rejection, validate_batch

__all__ = ["IngestResult", "ingest_batch", "records_to_arrow", "STATS"]

#: Largest raw record kept in dead_letters; the reason says it was cut.
MAX_DEAD_LETTER_BYTES = 64 * 1024

_ARROW_OF_KIND = {"uint": pa.uint64(), "str": pa.string(), "ip": pa.string(), "ts": pa.int64(), "enum": pa.string()}


@dataclass
class IngestResult:
    kind: str
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "accepted": self.accepted,
            "rejected": len(self.rejected),
            "errors": [r.as_dict() for r in self.rejected],
        }


class _Stats:
    """Process-wide ingest counters (exported by the API's /metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.batches = 0

    def add(self, result: IngestResult) -> None:
        with self._lock:
            self.batches += 1
            self.accepted[result.kind] = self.accepted.get(result.kind, 0) + result.accepted
            self.rejected[result.kind] = self.rejected.get(result.kind, 0) + len(result.rejected)


STATS = _Stats()


def records_to_arrow(kind: str, records: list[dict[str, Any]]) -> pa.Table:
    """Normalised records (``validate`` output) as an Arrow table for insert."""
    fields = RECORD_FIELDS[kind]
    return pa.table(
        {f.name: pa.array([r[f.name] for r in records], type=_ARROW_OF_KIND[f.kind]) for f in fields}
    )


def _dead_letter_rows(kind: str, source: str, raw: list[Any], rejected: list[Rejection]) -> list[dict[str, Any]]:
    now = int(time.time())
    rows = []
    for rejection in rejected:
        text = json.dumps(raw[rejection.index], default=str, sort_keys=True)
        reason = f"record {rejection.index}: {rejection.message}"
        if len(text) > MAX_DEAD_LETTER_BYTES:
            text = text[:MAX_DEAD_LETTER_BYTES]
            reason += f" (raw record cut to {MAX_DEAD_LETTER_BYTES} bytes)"
        rows.append({"received_at": now, "source": source, "kind": kind, "reason": reason, "raw": text})
    return rows


def ingest_batch(
    store: Any,
    kind: str,
    records: Iterable[Any],
    batch_id: str | None = None,
    source: str = "api",
) -> IngestResult:
    """Validate ``records`` of ``kind`` and insert the good ones once.

    Parameters
    ----------
    store : api.storage.Store
    kind : "connections" | "listeners"
    records : raw decoded JSON objects
    batch_id : the producer's id for this batch; replays with the same id
        (or, without one, with the same content) are stored once.
    source : where the batch came from, kept with dead letters.
    """
    if kind not in RECORD_FIELDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(RECORD_FIELDS)}")
    raw = list(records)
    good, bad = validate_batch(kind, raw)
    result = IngestResult(kind, rejected=bad)
    if good:
        if batch_id:
            token = f"{kind}:{batch_id}"
        else:
            digest = hashlib.sha256(json.dumps(good, sort_keys=True).encode()).hexdigest()[:32]
            token = f"{kind}:sha:{digest}"
        store.insert_arrow(kind, records_to_arrow(kind, good), dedup_token=token)
        result.accepted = len(good)
    if bad:
        store.insert_rows("dead_letters", _dead_letter_rows(kind, source, raw, bad))
    STATS.add(result)
    return result
