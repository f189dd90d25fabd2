"""The record contract applied to batches: which records are stored, and why the others are not.

The contract itself - fields, kinds, limits, the version - is
``tracer.records``; this module applies it on the way in, two ways that
accept exactly the same records:

* ``check_records`` - record by record (``tracer.records.validate``), for any
  input; records that could not even be decoded (``Undecodable``) are
  refused in their place.  Every ingest path uses it.
* ``fast_table`` - column by column, for a batch of JSON lines in the form
  the tracer writes: Arrow's JSON reader with the contract's schema, then
  range, enum, length and time checks on whole columns (lists of numbers
  flattened; each distinct IP and time parsed once).  An optional field (``Field.default``) that no record
  of the batch carries is filled with its default, as ``validate`` does; a
  batch where some records carry it and others do not goes to the exact
  path (Arrow reads an absent field and a null alike).  The Kafka consumer tries it first; any doubt sends the
  whole batch to ``check_records``.

Both read the field list and limits from ``tracer.records`` (``RECORD_FIELDS``,
``Field.max``, ``MAX_TEXT``, ``VERSION``); ``tests/test_contract.py`` checks
that they agree at every limit.  ``records_to_arrow`` is the form accepted
records are inserted in.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import pyarrow as pa

from api.ingest.decode import Undecodable
from tracer.records import MAX_TEXT, RECORD_FIELDS, U32, VERSION, Rejection, normalize_ip, validate_batch
from tracer.timestamps import WIRE_FORMAT

__all__ = ["check_records", "fast_table", "records_to_arrow"]

_ARROW_OF_KIND = {"uint": pa.uint64(), "uints": pa.list_(pa.uint64()), "str": pa.string(), "ip": pa.string(),
                  "ts": pa.int64(), "enum": pa.string()}


def records_to_arrow(kind: str, records: list[dict[str, Any]]) -> pa.Table:
    """Normalised records (``validate`` output) as an Arrow table for insert."""
    fields = RECORD_FIELDS[kind]
    return pa.table(
        {f.name: pa.array([r[f.name] for r in records], type=_ARROW_OF_KIND[f.kind]) for f in fields}
    )


def check_records(kind: str, raw: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """The normalised records of ``raw`` the contract accepts, and a ``Rejection``
    (by index into ``raw``) for each of the others, ``Undecodable`` ones included."""
    undecodable = [Rejection(i, None, r.reason) for i, r in enumerate(raw) if isinstance(r, Undecodable)]
    if not undecodable:
        return validate_batch(kind, raw)
    decoded = [i for i, r in enumerate(raw) if not isinstance(r, Undecodable)]
    good, bad = validate_batch(kind, [raw[i] for i in decoded])
    bad = sorted(undecodable + [Rejection(decoded[b.index], b.field, b.message) for b in bad],
                 key=lambda b: b.index)
    return good, bad


_ARROW_IN = {"str": pa.string(), "ip": pa.string(), "ts": pa.string(), "enum": pa.string(),
             "uints": pa.list_(pa.int64())}


def _schema_in(kind: str) -> pa.Schema:
    return pa.schema([
        (f.name, (pa.uint64() if f.max > 2**63 else pa.int64()) if f.kind == "uint" else _ARROW_IN[f.kind])
        for f in RECORD_FIELDS[kind]
    ])


_SCHEMAS = {kind: _schema_in(kind) for kind in RECORD_FIELDS}


def fast_table(kind: str, data: bytes, lines: int) -> pa.Table | None:
    """``data`` (``lines`` JSON lines) as the table ``records_to_arrow`` gives
    for them when *every* record passes the contract in the tracer's
    canonical form; None when any record needs the exact path (then
    ``check_records`` decides record by record)."""
    import pyarrow.compute as pc
    import pyarrow.json as pj

    try:
        tbl = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(block_size=4 << 20),
            parse_options=pj.ParseOptions(explicit_schema=_SCHEMAS[kind], unexpected_field_behavior="error"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if tbl.num_rows != lines:
        return None
    out = {}
    for f in RECORD_FIELDS[kind]:
        col = tbl.column(f.name)
        if col.null_count:
            if f.optional and col.null_count == len(col) and f'"{f.name}"'.encode() not in data:
                # No record names the field (the producer predates it).
                default = list(f.default) if f.kind == "uints" else f.default
                out[f.name] = pa.repeat(pa.scalar(default, _ARROW_OF_KIND[f.kind]), len(col))
                continue
            return None  # missing field or null
        if f.kind == "uint":
            lo_hi = pc.min_max(col).as_py()
            if lo_hi["min"] < 0 or lo_hi["max"] > f.max:
                return None
            if f.name == "v" and not lo_hi["min"] == lo_hi["max"] == VERSION:
                return None
            out[f.name] = col.cast(pa.uint64())
        elif f.kind == "uints":
            flat = pc.list_flatten(col)
            if flat.null_count or not set(pc.unique(pc.list_value_length(col)).to_pylist()) <= {0, f.length}:
                return None
            if len(flat):
                lo_hi = pc.min_max(flat).as_py()
                if lo_hi["min"] < 0 or lo_hi["max"] > f.max:
                    return None
            out[f.name] = col.cast(pa.list_(pa.uint64()))
        elif f.kind == "str":
            if len(col) and pc.max(pc.utf8_length(col)).as_py() > MAX_TEXT:
                return None
            out[f.name] = col
        elif f.kind == "enum":
            enc = col.combine_chunks().dictionary_encode()
            if not set(enc.dictionary.to_pylist()) <= set(f.choices):
                return None
            out[f.name] = col
        elif f.kind == "ts":
            # One interval's records share their ts: parse each distinct value once.
            enc = col.combine_chunks().dictionary_encode()
            parsed = pc.strptime(enc.dictionary, format=WIRE_FORMAT, unit="s", error_is_null=True)
            if parsed.null_count:
                return None
            secs = parsed.cast(pa.int64())
            lo_hi = pc.min_max(secs).as_py()
            if lo_hi["min"] < 0 or lo_hi["max"] > U32:
                return None
            out[f.name] = secs.take(enc.indices)
        elif f.kind == "ip":
            enc = col.combine_chunks().dictionary_encode()
            try:
                normal = pa.array([normalize_ip(v) for v in enc.dictionary.to_pylist()], pa.string())
            except ValueError:
                return None
            out[f.name] = normal.take(enc.indices)
    return pa.table(out)
