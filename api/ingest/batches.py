"""Record batches from the API's ingest endpoint and ``phobos load``: checked, stored once, counted.

``ingest_batch`` is the whole path for a batch that arrives in one piece:

1. each record is checked against the contract (``contract.check_records``);
   bad ones are refused with a reason, stored in ``dead_letters`` and
   counted, while the good ones in the same batch still land;
2. the good records are inserted with a deduplication token derived from the
   batch id (or, without one, from the batch content: two identical batches
   from one host for one interval are the same batch delivered twice), so
   at-least-once delivery never doubles what the rollups report.

The Kafka consumer (``kafka_consumer.py``) batches by partition and offset
instead, with the same check and dead letters.  ``STATS`` counts what every
path stored and refused in this process (``/metrics``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from api.ingest.contract import check_records, records_to_arrow
from api.ingest.dead_letters import rejection_rows
from api.storage import Store
from tracer.records import RECORD_FIELDS, Rejection

__all__ = ["IngestResult", "ingest_batch", "STATS"]


@dataclass
class IngestResult:
    kind: str
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    #: earliest ``ts`` of the records stored (None when none were)
    first_ts: int | None = None

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


def ingest_batch(
    store: Store,
    kind: str,
    records: Iterable[Any],
    batch_id: str | None = None,
    source: str = "api",
) -> IngestResult:
    """Validate ``records`` of ``kind`` and insert the good ones once.

    Parameters
    ----------
    store : Store
    kind : "connections" | "listeners"
    records : raw decoded JSON objects
    batch_id : the producer's id for this batch; replays with the same id
        (or, without one, with the same content) are stored once.
    source : where the batch came from, kept with dead letters.
    """
    if kind not in RECORD_FIELDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(RECORD_FIELDS)}")
    raw = list(records)
    good, bad = check_records(kind, raw)
    result = IngestResult(kind, rejected=bad)
    if good:
        if batch_id:
            token = f"{kind}:{batch_id}"
        else:
            digest = hashlib.sha256(json.dumps(good, sort_keys=True).encode()).hexdigest()[:32]
            token = f"{kind}:sha:{digest}"
        store.insert_arrow(kind, records_to_arrow(kind, good), dedup_token=token)
        result.accepted = len(good)
        result.first_ts = min(r["ts"] for r in good)
    if bad:
        rows = rejection_rows(kind, source, raw, bad)
        # A redelivered batch refuses the same records again: keep them once.
        ident = batch_id or hashlib.sha256(json.dumps([(r["reason"], r["raw"]) for r in rows]).encode()).hexdigest()[:32]
        store.insert_rows("dead_letters", rows, dedup_token=f"dead:{kind}:{ident}")
    STATS.add(result)
    return result
