"""ClickHouse access for Phobos: the only module that imports a ClickHouse client.

Two back ends behind one small interface (``Store``):

* ``chdb:///path/to/dir`` - embedded ClickHouse (chDB) in this process.  chDB
  runs one data path per process and refuses a second process on the same
  path with an unhelpful error, so ``ChdbStore`` takes an exclusive lock file
  in the data directory first and, when it is held, says which process and
  role (``phobos serve``, ``phobos simulate`` ...) holds it.  One
  ``chdb.session.Session`` per process, shared by threads under a lock:
  parameterised queries are not safe on a session used by two threads.
* ``clickhouse://user:pass@host:9000/phobos`` - a ClickHouse server through
  ``clickhouse-driver`` (native protocol, columnar inserts).

SQL text refers to the database through ``store.db`` (callers format it in)
and to parameters with ClickHouse's own ``{name:Type}`` syntax.

Inserts take an Arrow table (the fast path: chDB reads it in place through
the ``Python()`` table function, ~millions of rows/s) or plain row dicts.
Every insert may carry a ``dedup_token``: tables and rollups keep a
deduplication window, so a batch delivered twice is stored once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import string
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa

__all__ = [
    "DEFAULT_STORE_URL",
    "SQL_DIR",
    "StoreError",
    "StoreBusyError",
    "StoreURL",
    "Store",
    "ReadLimits",
    "parse_store_url",
    "open_store",
    "schema_files",
    "render_sql",
    "split_statements",
    "schema_statements",
    "clustered_statements",
    "analyst_user_statements",
]

DEFAULT_STORE_URL = "chdb://./data/phobos"
DEFAULT_TTL_DAYS = 30
#: Trace spans are kept this long (hours): they only wait for their parents.
DEFAULT_SPAN_TTL_HOURS = 6

#: Settings of every insert. optimize_on_insert=0: the Summing/Aggregating
#: rollups would otherwise collapse each inserted block while writing it,
#: which halves the ingest rate, and background merges plus sum() at read
#: time give the same numbers. parallel_view_processing: the rollup views of
#: one insert run side by side instead of one after the other.
INSERT_SETTINGS = {"optimize_on_insert": 0, "parallel_view_processing": 1}

#: ``sql/`` sits next to this package both in a checkout and in an installed
#: distribution (setup.cfg installs it as a data package beside ``api``).
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^{}]+)\}")
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


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
    if not _IDENT.match(parsed.database):
        raise StoreError(f"database name {parsed.database!r} is not a plain identifier")
    if parsed.database == "default":
        raise StoreError("Phobos keeps its tables in their own database, not 'default'")
    return parsed


def schema_files(directory: Path = SQL_DIR) -> list[tuple[int, str, Path]]:
    """The numbered migration files of ``directory`` in order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two schema files in {directory} share a number")
    return found


def render_sql(text: str, **values: Any) -> str:
    """Fill ``$name`` placeholders; a missing value is an error, not a blank."""
    try:
        return string.Template(text).substitute(values)
    except KeyError as err:
        raise StoreError(f"schema placeholder ${err.args[0]} has no value") from None


def split_statements(text: str) -> list[str]:
    """Statements of a schema file: ``--`` comment lines dropped, split on ``;``."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


_CREATE = re.compile(
    r"^CREATE (?P<what>DATABASE|TABLE|MATERIALIZED VIEW) IF NOT EXISTS (?P<name>[\w.]+)(?P<rest>.*)$", re.S
)
_ALTER = re.compile(r"^ALTER TABLE (?P<name>[\w.]+)(?P<rest>.*)$", re.S)
_ENGINE = re.compile(r"ENGINE = (?P<kind>\w*)MergeTree(?:\((?P<args>[^)]*)\))?")


def schema_statements(text: str, db: str, ttl_days: int, cluster: str | None = None,
                      span_ttl_hours: int = DEFAULT_SPAN_TTL_HOURS) -> list[str]:
    """The statements of one schema file, single-node or for ``cluster``."""
    statements = split_statements(render_sql(text, db=db, ttl_days=ttl_days, span_ttl_hours=span_ttl_hours))
    return clustered_statements(statements, db, cluster) if cluster else statements


def clustered_statements(statements: list[str], db: str, cluster: str) -> list[str]:
    """Rewrite single-node DDL for a sharded, replicated cluster.

    The same schema files serve both: every ``*MergeTree`` table ``x``
    becomes ``x_local`` (``Replicated*MergeTree`` with the usual
    ``{shard}``/``{replica}`` macros) plus a ``Distributed`` table ``x`` over
    it, so readers and writers keep using ``x``; materialized views read
    and write the local tables, so each shard rolls up its own rows; every
    statement runs ``ON CLUSTER``. Inserts through the Distributed tables
    should use ``insert_distributed_sync = 1`` so that deduplication tokens
    reach the replicas.
    """
    local = set()
    for stmt in statements:
        match = _CREATE.match(stmt)
        if match and match["what"] == "TABLE" and _ENGINE.search(stmt):
            local.add(match["name"])
    out = []
    for stmt in statements:
        alter = _ALTER.match(stmt)
        if alter:
            # Settings, TTLs and columns belong to the replicated tables; the
            # Distributed ones take new columns from them on the next DDL.
            out.append(f"ALTER TABLE {alter['name']}_local ON CLUSTER {cluster}{alter['rest']}")
            continue
        match = _CREATE.match(stmt)
        if not match:
            raise StoreError(f"cannot make this statement clustered: {stmt[:60]}...")
        name, rest = match["name"], match["rest"]
        head = f"CREATE {match['what']} IF NOT EXISTS"
        if match["what"] == "DATABASE":
            out.append(f"{head} {name} ON CLUSTER {cluster}{rest}")
        elif match["what"] == "TABLE" and name in local:
            short = name.split(".", 1)[1]

            def replicated(engine: re.Match, short: str = short) -> str:
                args = f"'/clickhouse/tables/{{shard}}/{db}/{short}_local', '{{replica}}'"
                if engine["args"]:
                    args += f", {engine['args']}"
                return f"ENGINE = Replicated{engine['kind']}MergeTree({args})"

            out.append(f"{head} {name}_local ON CLUSTER {cluster}{_ENGINE.sub(replicated, rest, count=1)}")
            out.append(
                f"{head} {name} ON CLUSTER {cluster} AS {name}_local "
                f"ENGINE = Distributed({cluster}, {db}, {short}_local, rand())"
            )
        else:
            for table in local:
                rest = re.sub(rf"\b{re.escape(table)}\b", f"{table}_local", rest)
            out.append(f"{head} {name} ON CLUSTER {cluster}{rest}")
    return out


def analyst_user_statements(db: str, user: str, password: str, cluster: str | None = None) -> list[str]:
    """The statements that make the analysts' read-only server user (``sql/server/analyst.sql``)."""
    for what, name in (("user", user), ("cluster", cluster or "x")):
        if not _IDENT.match(name):
            raise StoreError(f"{what} name {name!r} is not a plain identifier")
    if not password:
        raise StoreError("the analysts' user needs a password (PHOBOS_SQL_PASSWORD)")
    text = (SQL_DIR / "server" / "analyst.sql").read_text()
    return split_statements(render_sql(text, db=db, user=user, password=_sql_quote(password),
                                       on_cluster=f"ON CLUSTER {cluster}" if cluster else ""))


def _sql_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


class Store:
    """What Phobos needs from ClickHouse; see the module docstring."""

    url: StoreURL
    db: str

    # -- to be provided by back ends ------------------------------------
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of JSON-ready values (times as text, IPs as text)."""
        raise NotImplementedError

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> str:
        """The result rendered by ClickHouse in output format ``fmt``."""
        raise NotImplementedError

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        raise NotImplementedError

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        raise NotImplementedError

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> "Store":
        """A separate read-only connection for analysts' queries.

        It has its own session (embedded) or connection (server), so a slow
        query there never waits for, or holds up, ingest and the views; its
        current database is ``db``, the limits cannot be lifted from a query
        (``readonly = 1`` is set last), and writes are refused. ``url``
        names a server user made for it (see ``sql/server/analyst.sql``);
        without one the store's own URL is used.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared ------------------------------------------------------------
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
        if not self._has_migrations_table():
            return 0
        return int(self.query(f"SELECT max(version) FROM {self.db}.schema_migrations")[0][0])

    def migrate(
        self, ttl_days: int | None = None, directory: Path = SQL_DIR, cluster: str | None = None,
        span_ttl_hours: int | None = None,
    ) -> list[str]:
        """Apply the schema files not yet applied; returns what it changed.

        Idempotent: files already recorded are skipped (and refused if they
        were edited after being applied - schema files are append-only).
        ``ttl_days`` sets the raw-record retention: new tables get it (30
        when None), existing ones are altered only when it is given and
        differs, so a writer that merely ensures the schema never resets a
        retention someone chose; ``span_ttl_hours`` the same for trace
        spans. ``cluster`` applies the clustered variant of the same files
        (see ``clustered_statements``).
        """
        explicit_ttl = ttl_days is not None
        ttl_days = DEFAULT_TTL_DAYS if ttl_days is None else ttl_days
        if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 36500:
            raise StoreError(f"ttl_days must be a whole number of days from 1 to 36500, got {ttl_days!r}")
        explicit_span_ttl = span_ttl_hours is not None
        span_ttl_hours = DEFAULT_SPAN_TTL_HOURS if span_ttl_hours is None else span_ttl_hours
        if (isinstance(span_ttl_hours, bool) or not isinstance(span_ttl_hours, int)
                or not 1 <= span_ttl_hours <= 24 * 365):
            raise StoreError(f"span_ttl_hours must be a whole number of hours from 1 to 8760, got {span_ttl_hours!r}")
        if cluster is not None and not _IDENT.match(cluster):
            raise StoreError(f"cluster name {cluster!r} is not a plain identifier")
        changes: list[str] = []
        files = schema_files(directory)
        if not files:
            raise StoreError(f"no schema files found in {directory}")
        applied: dict[int, str] = {}
        if self._has_migrations_table():
            applied = dict(self.query(f"SELECT version, checksum FROM {self.db}.schema_migrations"))
        for version, name, path in files:
            text = path.read_text()
            checksum = hashlib.sha256(text.encode()).hexdigest()
            if version in applied:
                if applied[version] != checksum:
                    raise StoreError(
                        f"{path.name} changed after it was applied to {self.db}; schema files are "
                        f"append-only - put the change in a new numbered file"
                    )
                continue
            for statement in schema_statements(text, self.db, ttl_days, cluster, span_ttl_hours):
                self.execute(statement)
            self.insert_rows(
                "schema_migrations",
                [{"version": version, "name": name, "checksum": checksum, "applied_at": int(time.time())}],
            )
            changes.append(f"applied {path.name}")
        on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
        wanted = ([(t, ttl_days, "DAY") for t in ("connections", "listeners")] if explicit_ttl else []) + (
            [("spans", span_ttl_hours, "HOUR")] if explicit_span_ttl else [])
        for table, value, unit in wanted:
            table = f"{table}_local" if cluster else table
            current = self._ttl(table, unit)
            if current is not None and current != value:
                self.execute(f"ALTER TABLE {self.db}.{table}{on_cluster} MODIFY TTL ts + INTERVAL {value} {unit}")
                changes.append(f"{table}: TTL {current} -> {value} {unit.lower()}s")
        return changes

    def _has_migrations_table(self) -> bool:
        return bool(
            self.query(
                "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
                {"db": self.db},
            )[0][0]
        )

    def _ttl(self, table: str, unit: str = "DAY") -> int | None:
        rows = self.query(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": self.db, "t": table},
        )
        if not rows:
            return None
        match = re.search(rf"TTL ts \+ toInterval{unit.title()}\((\d+)\)", rows[0][0])
        return int(match.group(1)) if match else None


_ARROW_FOR = {
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(),
}


def _base_type(ch_type: str) -> str:
    for wrapper in ("LowCardinality(", "Nullable(", "SimpleAggregateFunction("):
        if ch_type.startswith(wrapper):
            inner = ch_type[len(wrapper):-1]
            if wrapper == "SimpleAggregateFunction(":
                inner = inner.split(",", 1)[1].strip()
            return _base_type(inner)
    return ch_type


def _arrow_type(ch_type: str) -> pa.DataType:
    """Wire type used to carry a value of ``ch_type`` into ClickHouse."""
    base = _base_type(ch_type)
    if base in _ARROW_FOR:
        return _ARROW_FOR[base]
    if base.startswith("DateTime"):
        return pa.int64()  # epoch seconds
    if base.startswith("Array("):
        return pa.list_(_arrow_type(base[len("Array("):-1]))
    if base.startswith("Map("):
        return pa.map_(pa.string(), pa.string())
    return pa.string()  # String, Enum, IPv6, IPv4, UUID ...


def _select_expr(name: str, ch_type: str, arrow_type: pa.DataType) -> str:
    """Expression that turns an Arrow column into the target column's type."""
    col = f"`{name}`"
    base = _base_type(ch_type)
    if base == "IPv6":
        if pa.types.is_integer(arrow_type):
            # IPv4 as a number: the cheapest form for generated data.
            return f"CAST(toIPv4(toUInt32({col})) AS IPv6)"
        return f"toIPv6({col})"
    if base.startswith("DateTime"):
        if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
            return f"toDateTime(toInt64({col}), 'UTC')"
        if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
            return f"parseDateTimeBestEffort({col}, 'UTC')"
        return col
    if base.startswith("Map("):
        return f"CAST(mapApply((k, v) -> (k, ifNull(v, '')), {col}) AS {base})"
    if base.startswith("Array("):
        return f"CAST({col} AS {base})"
    return col


# One embedded engine per process: chDB refuses a second path until the first
# is closed, so sessions are shared per path and counted.
_CHDB_LOCK = threading.Lock()
_CHDB_OPEN: dict[str, "_ChdbEngine"] = {}


class _ChdbEngine:
    def __init__(self, path: str, role: str):
        from chdb import session as chdb_session

        self.path = path
        Path(path).mkdir(parents=True, exist_ok=True)
        self.lock_path = Path(path) / "phobos.lock"
        self.lock_file = open(self.lock_path, "a+")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.seek(0)
            holder = self.lock_file.read().strip()
            self.lock_file.close()
            try:
                info = json.loads(holder)
                who = f"process {info['pid']} ({info['role']}, since {info['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise StoreBusyError(
                f"the embedded store {path} is in use by {who}; chDB opens a data directory "
                f"from one process only - stop that process, point this one at its API, or "
                f"use another --store directory"
            ) from None
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "role": role,
                    "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        )
        self.lock_file.flush()
        try:
            self.session = chdb_session.Session(path)
        except Exception as err:
            self._release()
            raise StoreError(f"cannot open the embedded store {path}: {err}") from None
        self.mutex = threading.RLock()
        self.users = 0
        self.readers: list["_ChdbEngine"] = []  # read-only sessions on this path
        # Numbers as JSON numbers: Python reads them exactly at any size.
        self.session.query("SET output_format_json_quote_64bit_integers = 0", "CSV")

    def _release(self) -> None:
        try:
            self.lock_file.seek(0)
            self.lock_file.truncate()
            fcntl.flock(self.lock_file, fcntl.LOCK_UN)
        finally:
            self.lock_file.close()

    def close(self) -> None:
        # chDB keeps a path open while any session on it lives, and then
        # refuses to open another path in this process.
        for reader in self.readers:
            reader.session.close()
        self.readers.clear()
        self.session.close()
        self._release()


class ChdbStore(Store):
    """Embedded ClickHouse in this process (see module docstring)."""

    def __init__(self, url: StoreURL, role: str = "phobos"):
        self.url = url
        self.db = url.database
        with _CHDB_LOCK:
            engine = _CHDB_OPEN.get(url.path)
            if engine is None:
                if _CHDB_OPEN:
                    other = next(iter(_CHDB_OPEN))
                    raise StoreError(
                        f"this process already has the embedded store {other} open; chDB runs one "
                        f"data directory per process, so {url.path} cannot be opened beside it"
                    )
                engine = _ChdbEngine(url.path, role)
                _CHDB_OPEN[url.path] = engine
            engine.users += 1
        self._engine: _ChdbEngine | None = engine

    @property
    def engine(self) -> _ChdbEngine:
        if self._engine is None:
            raise StoreError("the store is closed")
        return self._engine

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        engine = self.engine
        with engine.mutex:
            try:
                if params:
                    return engine.session.query(sql, fmt, params=_chdb_params(params))
                return engine.session.query(sql, fmt)
            except Exception as err:
                self._discard_partial_output(engine)
                raise StoreError(_clean_error(err)) from None

    @staticmethod
    def _discard_partial_output(engine: "_ChdbEngine") -> None:
        # chDB hands the partial output of a query that failed midway (row
        # limit, timeout) to the session's next query; a throwaway query
        # takes it while the lock is still held.
        try:
            engine.session.query("SELECT 1", "CSV")
        except Exception:
            pass

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, "CSV", params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        result = self._run(sql, "ArrowTable", params)
        if isinstance(result, pa.Table):
            return result
        return pa.table({})

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        result = self._run(sql, "JSONCompact", params)
        text = result.bytes() if hasattr(result, "bytes") else bytes(result)
        if not text.strip():
            return [], []
        doc = json.loads(text)
        return [col["name"] for col in doc["meta"]], [tuple(row) for row in doc["data"]]

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> str:
        result = self._run(sql, fmt, params)
        return result.bytes().decode() if hasattr(result, "bytes") else str(result)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        if data.num_rows == 0:
            return 0
        types = self.column_types(table)
        missing = [name for name in data.column_names if name not in types]
        if missing:
            raise StoreError(f"{self.db}.{table} has no column(s) {', '.join(missing)}")
        exprs = ", ".join(
            _select_expr(name, types[name], data.schema.field(name).type) for name in data.column_names
        )
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        settings = " SETTINGS " + ", ".join(f"{k} = {v}" for k, v in INSERT_SETTINGS.items())
        if dedup_token:
            settings += f", insert_deduplication_token = {_sql_quote(dedup_token)}"
        # The Python() table function finds `phobos_insert_data` among this
        # frame's locals; that is how chDB reads Arrow memory without a copy.
        phobos_insert_data = data  # noqa: F841
        sql = f"INSERT INTO {self.db}.{table} ({cols}){settings} SELECT {exprs} FROM Python(phobos_insert_data)"
        engine = self.engine
        with engine.mutex:
            try:
                engine.session.query(sql, "CSV")
            except Exception as err:
                self._discard_partial_output(engine)
                raise StoreError(f"insert into {self.db}.{table} failed: {_clean_error(err)}") from None
        return data.num_rows

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> "Store":
        if url:
            raise StoreError("a separate reader URL is for ClickHouse servers; the embedded store "
                             "opens its own read-only session")
        return _ChdbReader(self, limits)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        with _CHDB_LOCK:
            engine.users -= 1
            if engine.users == 0:
                _CHDB_OPEN.pop(engine.path, None)
                engine.close()


class _ChdbReader(ChdbStore):
    """A read-only session on the engine of an open ``ChdbStore``.

    chDB runs several sessions on one data path inside a process, each with
    its own settings, and a query on one does not wait for the others (a
    single session runs its queries one at a time).
    """

    def __init__(self, owner: ChdbStore, limits: ReadLimits):
        from chdb import session as chdb_session

        self.url = owner.url
        self.db = owner.db
        engine = owner.engine
        reader = _ChdbEngine.__new__(_ChdbEngine)
        reader.path = engine.path
        reader.session = chdb_session.Session(engine.path)
        reader.mutex = threading.RLock()
        reader.users = 1
        reader.readers = []
        try:
            for statement in (
                "SET output_format_json_quote_64bit_integers = 0",
                f"USE {self.db}",
                *(f"SET {k} = {_sql_literal(v)}" for k, v in limits.settings().items()),
                "SET readonly = 1",  # last: from here on no setting can change
            ):
                reader.session.query(statement, "CSV")
        except Exception as err:
            reader.session.close()
            raise StoreError(f"cannot open a read-only session: {_clean_error(err)}") from None
        self._owner = engine
        self._engine = reader
        with _CHDB_LOCK:
            engine.readers.append(reader)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        raise StoreError("this session is read-only")

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> "Store":
        raise StoreError("a read-only session opens no further sessions")

    def close(self) -> None:
        reader, self._engine = self._engine, None
        if reader is None:
            return
        with _CHDB_LOCK:
            if reader in self._owner.readers:
                self._owner.readers.remove(reader)
                reader.session.close()


def _sql_literal(value: Any) -> str:
    return _sql_quote(value) if isinstance(value, str) else repr(value)


def _chdb_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, datetime):
            value = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        elif isinstance(value, (list, tuple)):
            # An array is read as a literal: escapes inside its quoted strings.
            value = "[" + ",".join(
                "'" + v.translate(_QUOTED_FORM) + "'" if isinstance(v, str) else str(v) for v in value
            ) + "]"
        elif isinstance(value, str):
            # ClickHouse reads parameter values in its escaped (TSV) form: a
            # raw newline or tab is refused and a backslash starts an escape.
            value = value.translate(_ESCAPED_FORM)
        out[key] = value
    return out


_QUOTED_FORM = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"})
_ESCAPED_FORM = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"})


def _clean_error(err: Exception) -> str:
    text = str(err).strip()
    # ClickHouse appends a stack trace and version to many messages.
    text = text.split("Stack trace", 1)[0].strip()
    return re.sub(r"\s+\(version [^)]*\)\s*$", "", text)


class ClickHouseStore(Store):
    """A ClickHouse server through clickhouse-driver (native protocol)."""

    def __init__(self, url: StoreURL, role: str = "phobos", settings: dict[str, Any] | None = None,
                 send_settings: bool = True):
        from clickhouse_driver import Client

        self.url = url
        self.db = url.database
        self._local = threading.local()
        self._client_args = dict(
            host=url.host, port=url.port, user=url.user, password=url.password,
            secure=url.secure, client_name=f"phobos-{role}",
            settings={"use_numpy": False, **((settings or {}) if send_settings else {})},
        )
        self._client_cls = Client
        self.read_only = bool(settings and settings.get("readonly"))
        if self.read_only:
            # Unqualified table names in analysts' queries mean Phobos' tables.
            self._client_args["database"] = url.database

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> "Store":
        parsed = parse_store_url(url) if url else self.url
        if parsed.scheme != "clickhouse":
            raise StoreError("the reader URL of a ClickHouse store must be clickhouse://...")
        if parsed.database != self.db:
            raise StoreError(f"the reader URL names database {parsed.database}, the store {self.db}")
        if url:
            # A user made for analysts has these limits and readonly = 1 in its
            # own profile (sql/server/analyst.sql); a readonly user may not
            # send settings, so none are sent.
            return ClickHouseStore(parsed, "phobos-sql", {"readonly": 1}, send_settings=False)
        return ClickHouseStore(parsed, "phobos-sql", {**limits.settings(), "readonly": 1})

    @property
    def client(self) -> Any:
        # clickhouse-driver clients are not thread-safe: one per thread.
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._client_cls(**self._client_args)
            self._local.client = client
        return client

    def _call(self, sql: str, params: dict[str, Any] | None, **kwargs: Any) -> Any:
        text, values = driver_params(sql, params)
        try:
            return self.client.execute(text, values, **kwargs)
        except Exception as err:
            raise StoreError(f"{self.url.redacted()}: {_clean_error(err)}") from None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._call(sql, params)

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        rows, columns = self._call(sql, params, with_column_types=True)
        return [name for name, _ in columns], [tuple(_driver_value(v) for v in row) for row in rows]

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> str:
        # The native protocol returns values, not formatted text: render the
        # formats the CLI offers here.
        names, rows = self.query_columns(sql, params)
        return render_rows(names, rows, fmt)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        rows, columns = self._call(sql, params, with_column_types=True, columnar=True)
        return pa.table({name: pa.array([_driver_value(v) for v in col]) for (name, _), col in zip(columns, rows)})

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        if self.read_only:
            raise StoreError("this connection is read-only")
        if data.num_rows == 0:
            return 0
        types = self.column_types(table)
        columns = []
        for name in data.column_names:
            values = data.column(name).to_pylist()
            if _base_type(types[name]).startswith("DateTime"):
                values = [datetime.fromtimestamp(v, tz=timezone.utc) if isinstance(v, (int, float)) else v for v in values]
            elif _base_type(types[name]) == "IPv6":
                import ipaddress

                values = [str(ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(v)}")) if isinstance(v, int) else v for v in values]
            columns.append(values)
        settings: dict[str, Any] = dict(INSERT_SETTINGS)
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        try:
            self.client.execute(
                f"INSERT INTO {self.db}.{table} ({cols}) VALUES", columns, columnar=True, settings=settings
            )
        except Exception as err:
            raise StoreError(f"insert into {self.db}.{table} failed: {_clean_error(err)}") from None
        return data.num_rows

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.disconnect()


def _driver_value(value: Any) -> Any:
    """The driver's Python objects as the JSON-ready values chDB returns."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if type(value).__name__ in ("IPv4Address", "IPv6Address"):
        return str(value)
    return value


def render_rows(names: list[str], rows: list[tuple], fmt: str) -> str:
    """Rows as CSV, JSONEachRow or a plain text table (for the CLI)."""
    import csv
    import io

    if fmt == "CSVWithNames":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "JSONEachRow":
        return "".join(json.dumps(dict(zip(names, row)), default=str) + "\n" for row in rows)
    cells = [names] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(names))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def driver_params(sql: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Turn ``{name:Type}`` parameters into clickhouse-driver's ``%(name)s``.

    The driver substitutes client-side with its own escaping; the CAST keeps
    the type the query asked for. Literal ``%`` is doubled for the driver.
    """
    if not params:
        return sql, {}
    text = sql.replace("%", "%%")

    def repl(match: re.Match) -> str:
        name, ch_type = match.group(1), match.group(2).strip()
        if name not in params:
            raise StoreError(f"query parameter {name!r} has no value")
        if ch_type in ("Identifier",):
            raise StoreError("identifier parameters are not supported")
        return f"CAST(%({name})s AS {ch_type})"

    return _PARAM.sub(repl, text), dict(params)


def open_store(url: str | None = None, role: str = "phobos") -> Store:
    """Open the store at ``url`` (default: ``$PHOBOS_STORE`` or the embedded default).

    ``role`` names this process in the embedded store's lock file, so that a
    second process is told who holds the data directory.
    """
    parsed = parse_store_url(url or os.environ.get("PHOBOS_STORE") or DEFAULT_STORE_URL)
    if parsed.scheme == "chdb":
        return ChdbStore(parsed, role)
    return ClickHouseStore(parsed, role)


def batch_token(parts: Iterable[Any]) -> str:
    """A stable dedup token for a batch identified by ``parts``."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
