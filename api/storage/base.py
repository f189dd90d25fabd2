"""What the two back ends share: the ``Store`` methods built on their primitives.

A back end provides ``execute``, ``query_columns``, ``query_text``,
``query_arrow``, ``insert_arrow``, ``open_reader`` and ``close``;
``StoreBase`` builds the rest of ``Store`` on them - row dicts, column types
(cached per table), inserting plain rows through Arrow, and the schema
(``api.storage.migrations``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from api.storage import migrations
from api.storage.interface import Store, StoreError, StoreURL

__all__ = ["StoreBase", "INSERT_SETTINGS", "QUERY_SETTINGS", "base_type", "clean_error"]

#: Settings of every insert. optimize_on_insert=0: the Summing/Aggregating
#: rollups would otherwise collapse each inserted block while writing it,
#: which halves the ingest rate, and background merges plus sum() at read
#: time give the same numbers. parallel_view_processing: the rollup views of
#: one insert run side by side instead of one after the other.
INSERT_SETTINGS = {"optimize_on_insert": 0, "parallel_view_processing": 1}

#: Settings of Phobos' own sessions (not the analysts' read-only ones).
#: ClickHouse compiles an expression or aggregation to machine code with
#: LLVM once it has seen it three times: the view queries are small, so the
#: fourth call of each paid 20-70 ms for that and the calls after it ran no
#: faster, nor did the resolution stage's (measured with bench_api.py).
QUERY_SETTINGS = {"compile_expressions": 0, "compile_aggregate_expressions": 0}


class StoreBase:
    """The shared half of a ``Store``; see the module docstring."""

    url: StoreURL
    db: str

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.query_columns(sql, params)[1]

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        names, rows = self.query_columns(sql, params)
        return [dict(zip(names, row)) for row in rows]

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> ClickHouse type of ``db.table``, in table order."""
        cache = self.__dict__.setdefault("_column_types", {})
        if table not in cache:
            rows = self.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} "
                "AND table = {t:String} ORDER BY position",
                {"db": self.db, "t": table},
            )
            if not rows:
                raise StoreError(f"table {self.db}.{table} does not exist; run `phobos migrate` first")
            cache[table] = dict(rows)
        return cache[table]

    def insert_rows(self, table: str, rows: Sequence[dict[str, Any]], dedup_token: str | None = None) -> int:
        """Insert plain row dicts (keys = column names); columns left out take defaults."""
        if not rows:
            return 0
        types = self.column_types(table)
        names = [name for name in types if name in rows[0]]
        unknown = set(rows[0]) - set(types)
        if unknown:
            raise StoreError(f"{self.db}.{table} has no column(s) {', '.join(sorted(unknown))}")
        arrays = {name: pa.array([row[name] for row in rows], type=_arrow_type(types[name])) for name in names}
        return self.insert_arrow(table, pa.table(arrays), dedup_token)

    def schema_version(self) -> int:
        """Highest applied schema file number; 0 for an empty store."""
        return migrations.schema_version(self)

    def migrate(self, ttl_days: int | None = None, directory: Path | None = None, cluster: str | None = None,
                span_ttl_hours: int | None = None) -> list[str]:
        """Apply the schema files not yet applied; returns what it changed (``api.storage.migrations.migrate``)."""
        return migrations.migrate(self, ttl_days, directory, cluster, span_ttl_hours)

    # -- provided by the back ends --------------------------------------------
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        raise NotImplementedError

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        raise NotImplementedError


_ARROW_FOR = {
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(),
}


def base_type(ch_type: str) -> str:
    """``ch_type`` without the wrappers that do not change how a value is written."""
    for wrapper in ("LowCardinality(", "Nullable(", "SimpleAggregateFunction("):
        if ch_type.startswith(wrapper):
            inner = ch_type[len(wrapper):-1]
            if wrapper == "SimpleAggregateFunction(":
                inner = inner.split(",", 1)[1].strip()
            return base_type(inner)
    return ch_type


def _arrow_type(ch_type: str) -> pa.DataType:
    """Wire type used to carry a value of ``ch_type`` into ClickHouse."""
    base = base_type(ch_type)
    if base in _ARROW_FOR:
        return _ARROW_FOR[base]
    if base.startswith("DateTime"):
        return pa.int64()  # epoch seconds
    if base.startswith("Array("):
        return pa.list_(_arrow_type(base[len("Array("):-1]))
    if base.startswith("Map("):
        return pa.map_(pa.string(), pa.string())
    return pa.string()  # String, Enum, IPv6, IPv4, UUID ...


def clean_error(err: Exception) -> str:
    """ClickHouse's message without the stack trace and version it appends to many."""
    text = str(err).strip()
    text = text.split("Stack trace", 1)[0].strip()
    return re.sub(r"\s+\(version [^)]*\)\s*$", "", text)
