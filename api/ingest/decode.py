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
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

from tracer.records import RECORD_FIELDS, Rejection, validate_batch

__all__ = ["IngestResult", "ingest_batch", "records_to_arrow", "STATS", "Undecodable", "decode_record",
           "decode_body", "dead_letter_row", "MAX_DEAD_LETTER_BYTES", "MAX_JSON_DEPTH"]

#: Largest raw record kept in dead_letters; the reason says it was cut.
MAX_DEAD_LETTER_BYTES = 64 * 1024
#: Deepest JSON a body may hold. Records are flat and the webhook payloads a
#: few levels deep; Python's own parser gives up (RecursionError) near 1,000.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Undecodable:
    """A record that could not even be decoded; it becomes a dead letter with ``reason``."""

    raw: bytes | str
    reason: str


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


def decode_record(raw: bytes | str) -> Any:
    """One JSON-lines record, or ``Undecodable`` with the reason it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        return Undecodable(raw, f"not UTF-8: {err.reason} at byte {err.start}")
    try:
        value = json.loads(text)
    except RecursionError:
        return Undecodable(raw, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    except ValueError as err:
        return Undecodable(raw, f"not JSON: {err}")
    if _depth(value) > MAX_JSON_DEPTH:
        return Undecodable(raw, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


_STRUCTURE = re.compile(rb'\\.|["\[\]{}]', re.S)


def _cut_deep(data: bytes, cut_depth: int) -> tuple[bytes, str, list[bytes]]:
    """``data`` with each container opened at ``cut_depth`` that nests deeper than
    ``MAX_JSON_DEPTH`` replaced by a placeholder string; the cut-out texts."""
    # NUL cannot occur in a record field the contract accepts: the marker cannot be forged into one.
    marker = "\0phobos-cut:" + os.urandom(8).hex() + ":"
    out, cuts = [], []
    depth, in_string, start, deep, last = 0, False, -1, False, 0
    for match in _STRUCTURE.finditer(data):
        token = match.group()
        if token[0] == 0x5C:  # an escape: only inside strings, never structure
            continue
        if token == b'"':
            in_string = not in_string
        elif in_string:
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth == cut_depth:
                start, deep = match.start(), False
            elif depth > MAX_JSON_DEPTH and start >= 0:
                deep = True
        else:
            if depth == cut_depth and start >= 0:
                if deep:
                    out += [data[last:start], json.dumps(f"{marker}{len(cuts)}").encode()]
                    cuts.append(data[start:match.end()])
                    last = match.end()
                start = -1
            depth -= 1
    if start >= 0 and deep:  # unterminated: cut to the end, the parser reports the rest
        out += [data[last:start], json.dumps(f"{marker}{len(cuts)}").encode()]
        cuts.append(data[start:])
        last = len(data)
    out.append(data[last:])
    return b"".join(out), marker, cuts


def decode_body(data: bytes, records_at: int | None = None) -> Any:
    """A request body as JSON, refusing bodies nested deeper than ``MAX_JSON_DEPTH``.

    With ``records_at`` (the depth of the records in the body: 3 for
    ``{"connections": [{...}]}``, 2 for ``[{...}]``), a record nested too deeply is cut out and
    stands in the result as ``Undecodable``, so the rest of the body still
    counts; anywhere else depth is the whole body's fault.

    Raises
    ------
    ValueError
        With a reason for a person: not UTF-8, not JSON, nested too deeply.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"the body is not UTF-8: {err.reason} at byte {err.start}") from None
    try:
        value = json.loads(text)
        deep = _depth(value) > MAX_JSON_DEPTH
    except RecursionError:
        deep = True
    except ValueError as err:
        raise ValueError(f"the body is not JSON: {err}") from None
    if not deep:
        return value
    if records_at is None:
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    cut, marker, cuts = _cut_deep(data, records_at)
    try:
        value = json.loads(cut.decode("utf-8"))
    except (RecursionError, ValueError):
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")

    restored = 0

    def restore(item: Any) -> Any:
        nonlocal restored
        if isinstance(item, str) and item.startswith(marker):
            index = item[len(marker):]
            if index.isdigit() and int(index) < len(cuts):
                restored += 1
                return Undecodable(cuts[int(index)], f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return item

    if isinstance(value, dict) and records_at == 3:
        value = {k: [restore(r) for r in v] if isinstance(v, list) else v for k, v in value.items()}
    elif isinstance(value, list) and records_at == 2:
        value = [restore(r) for r in value]
    if restored < len(cuts):  # something deep where no records are
        raise ValueError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _text(value: Any) -> str:
    """Text that ClickHouse (through Arrow) can store whatever ``value`` holds."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        try:
            value = json.dumps(value, default=str, sort_keys=True)
        except (RecursionError, ValueError, TypeError):
            value = f"<{type(value).__name__} that cannot be shown>"
    # Lone surrogates (a "\ud800" escape) cannot be encoded as UTF-8.
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_row(kind: str, source: str, reason: str, raw: Any, now: int | None = None,
                    unit: str = "record") -> dict[str, Any]:
    """One row of ``dead_letters``: the refused input, cut to ``MAX_DEAD_LETTER_BYTES``."""
    if isinstance(raw, bytes) and len(raw) > MAX_DEAD_LETTER_BYTES:
        raw = raw[:MAX_DEAD_LETTER_BYTES + 1]  # decode no more than is kept
    text = _text(raw)
    if len(text) > MAX_DEAD_LETTER_BYTES:
        text = text[:MAX_DEAD_LETTER_BYTES]
        reason += f" (raw {unit} cut to {MAX_DEAD_LETTER_BYTES} bytes)"
    return {"received_at": int(time.time()) if now is None else now, "source": _text(source)[:1024],
            "kind": kind, "reason": _text(reason)[:4096], "raw": text}

_ARROW_OF_KIND = {"uint": pa.uint64(), "str": pa.string(), "ip": pa.string(), "ts": pa.int64(), "enum": pa.string()}


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
        record = raw[rejection.index]
        body = record.raw if isinstance(record, Undecodable) else record
        rows.append(dead_letter_row(kind, source, f"record {rejection.index}: {rejection.message}", body, now))
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
    undecodable = [Rejection(i, None, r.reason) for i, r in enumerate(raw) if isinstance(r, Undecodable)]
    if undecodable:
        decoded = [i for i, r in enumerate(raw) if not isinstance(r, Undecodable)]
        good, bad = validate_batch(kind, [raw[i] for i in decoded])
        bad = sorted(undecodable + [Rejection(decoded[b.index], b.field, b.message) for b in bad],
                     key=lambda b: b.index)
    else:
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
        result.first_ts = min(r["ts"] for r in good)
    if bad:
        rows = _dead_letter_rows(kind, source, raw, bad)
        # A redelivered batch refuses the same records again: keep them once.
        ident = batch_id or hashlib.sha256(json.dumps([(r["reason"], r["raw"]) for r in rows]).encode()).hexdigest()[:32]
        store.insert_rows("dead_letters", rows, dedup_token=f"dead:{kind}:{ident}")
    STATS.add(result)
    return result
