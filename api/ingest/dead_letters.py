"""The one builder of ``dead_letters`` rows: what was refused, from where, and why.

Every path that refuses input - a record the contract refuses, a line that
is not JSON, a Kafka message too large, a request body that cannot be read -
keeps it here, so an operator finds it in one table whatever way it came.
The raw input is kept as text (cut to ``MAX_DEAD_LETTER_BYTES``) whatever it
holds: bytes that are not UTF-8 and lone surrogates are escaped, not lost.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from api.ingest.decode import Undecodable
from tracer.records import Rejection

__all__ = ["dead_letter_row", "rejection_rows", "MAX_DEAD_LETTER_BYTES"]

#: Largest raw record kept in dead_letters; the reason says it was cut.
MAX_DEAD_LETTER_BYTES = 64 * 1024


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


def rejection_rows(kind: str, source: str, raw: Sequence[Any], rejected: Sequence[Rejection]) -> list[dict[str, Any]]:
    """The dead letters of a batch's refused records (``raw`` as it came, ``Undecodable`` included)."""
    now = int(time.time())
    rows = []
    for rejection in rejected:
        record = raw[rejection.index]
        body = record.raw if isinstance(record, Undecodable) else record
        rows.append(dead_letter_row(kind, source, f"record {rejection.index}: {rejection.message}", body, now))
    return rows
