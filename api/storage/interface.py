"""What the rest of Phobos may ask of a store, how a store is named, and how it fails.

``Store`` is the interface every caller types against; ``api.storage.open_store``
returns one of the two back ends (``embedded.ChdbStore``,
``server.ClickHouseStore``), which share ``base.StoreBase``.  Nothing here
imports a ClickHouse client or pyarrow, so naming a store (``parse_store_url``)
or catching ``StoreError`` costs nothing.

SQL text refers to the database through ``store.db`` (callers format it in)
and to parameters with ClickHouse's own ``{name:Type}`` syntax; the few
values written into SQL text itself are checked names (``IDENTIFIER``) or
literals made here: ``sql_quote`` (a string), ``sql_escape`` (the inside of
one, for templates that hold the quotes) and ``sql_literal`` (strings,
numbers, arrays and tuples of them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_STORE_URL",
    "IDENTIFIER",
    "Store",
    "StoreError",
    "StoreBusyError",
    "StoreURL",
    "ReadLimits",
    "parse_store_url",
    "sql_escape",
    "sql_literal",
    "sql_quote",
]

DEFAULT_STORE_URL = "chdb://./data/phobos"

#: A database, cluster or user name that can be written into SQL as it is.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Inside a quoted literal ClickHouse reads backslash escapes; control
# characters are escaped too, so a literal stays on one line of a statement.
_QUOTED = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"})


def sql_escape(value: str) -> str:
    """``value`` as the inside of a single-quoted SQL string literal."""
    return str(value).translate(_QUOTED)


def sql_quote(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + sql_escape(value) + "'"


def sql_literal(value: Any) -> str:
    """A SQL literal of a string, number, bool, or a list (array) or tuple of them."""
    if isinstance(value, str):
        return sql_quote(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(sql_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


class StoreError(RuntimeError):
    """A store that cannot be opened or used, with a message for a person."""


class StoreBusyError(StoreError):
    """The embedded store's data path is held by another process."""


@dataclass(frozen=True)
class StoreURL:
    scheme: str  # "chdb" | "clickhouse"
    path: str = ""
    host: str = ""
    port: int = 9000
    user: str = "default"
    password: str = ""
    database: str = "phobos"
    secure: bool = False

    def redacted(self) -> str:
        if self.scheme == "chdb":
            return f"chdb://{self.path}"
        return f"clickhouse://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_store_url(url: str) -> StoreURL:
    """Parse a store URL.

    ``chdb:///abs/dir`` or ``chdb://relative/dir`` (``?database=NAME``
    optional); ``clickhouse://[user[:password]@]host[:port][/database]``
    (``?secure=1`` for TLS).

    Raises
    ------
    StoreError
        For anything else, saying which forms are accepted.
    """
    forms = "use chdb:///path/to/dir or clickhouse://user:pass@host:9000/phobos"
    if not isinstance(url, str) or "://" not in url:
        raise StoreError(f"store URL {url!r} has no scheme; {forms}")
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    database = options.pop("database", "phobos")
    if scheme == "chdb":
        if options:
            raise StoreError(f"unknown chdb store option(s) {', '.join(options)}")
        path = unquote(rest)
        if not path:
            raise StoreError(f"store URL {url!r} names no directory; {forms}")
        parsed = StoreURL("chdb", path=os.path.abspath(path), database=database)
    elif scheme == "clickhouse":
        parts = urlsplit(f"clickhouse://{rest}")
        if not parts.hostname:
            raise StoreError(f"store URL {url!r} names no host; {forms}")
        secure = options.pop("secure", "0") in ("1", "true", "yes")
        if options:
            raise StoreError(f"unknown clickhouse store option(s) {', '.join(options)}")
        try:
            port = parts.port or (9440 if secure else 9000)
        except ValueError:
            raise StoreError(f"store URL {url!r} has a bad port") from None
        db_from_path = parts.path.strip("/")
        parsed = StoreURL(
            "clickhouse",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=db_from_path or database,
            secure=secure,
        )
    else:
        raise StoreError(f"unknown store scheme {scheme!r}; {forms}")
    if not IDENTIFIER.match(parsed.database):
        raise StoreError(f"database name {parsed.database!r} is not a plain identifier")
    if parsed.database == "default":
        raise StoreError("Phobos keeps its tables in their own database, not 'default'")
    return parsed


@dataclass(frozen=True)
class ReadLimits:
    """Limits of a read-only connection for ad-hoc queries.

    They hold for the whole query on the server side (``max_execution_time``
    and ``max_memory_usage`` are ClickHouse's own); ``max_threads`` keeps one
    heavy query from taking every core from ingest and the views.
    """

    max_seconds: float = 10.0
    max_memory_bytes: int = 2 * 1024**3
    max_rows: int = 10_000
    max_result_bytes: int = 64 * 1024 * 1024
    max_threads: int = 1

    def settings(self) -> dict[str, Any]:
        return {
            "max_execution_time": float(self.max_seconds),
            "timeout_overflow_mode": "throw",
            "max_memory_usage": int(self.max_memory_bytes),
            "max_result_rows": int(self.max_rows),
            "max_result_bytes": int(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "max_threads": int(self.max_threads),
        }


class Store(Protocol):
    """A ClickHouse database as Phobos uses it.

    Reads return JSON-ready values (times and IPs as text) or an Arrow
    table; inserts take an Arrow table (the fast path) or plain row dicts,
    and may carry a ``dedup_token``: tables and rollups keep a deduplication
    window, so a batch delivered twice is stored once.  Every failure is a
    ``StoreError``.
    """

    url: StoreURL
    db: str

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]: ...

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of JSON-ready values (times as text, IPs as text)."""
        ...

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> str:
        """The result rendered in ClickHouse output format ``fmt``."""
        ...

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table: ...

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> ClickHouse type of ``db.table``, in table order."""
        ...

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int: ...

    def insert_rows(self, table: str, rows: Sequence[dict[str, Any]], dedup_token: str | None = None) -> int:
        """Insert plain row dicts (keys = column names); columns left out take defaults."""
        ...

    def schema_version(self) -> int:
        """Highest applied schema file number; 0 for an empty store."""
        ...

    def migrate(self, ttl_days: int | None = None, directory: Path | None = None, cluster: str | None = None,
                span_ttl_hours: int | None = None) -> list[str]:
        """Apply the schema files not yet applied (``api.storage.migrations``); returns what changed."""
        ...

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> Store:
        """A separate read-only connection for analysts' queries.

        It has its own session (embedded) or connection (server), so a slow
        query there never waits for, or holds up, ingest and the views; its
        current database is ``db``, the limits cannot be lifted from a query
        (``readonly = 1`` is set last), and writes are refused. ``url``
        names a server user made for it (see ``sql/server/analyst.sql``);
        without one the store's own URL is used.
        """
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: Any) -> None: ...
