"""``chdb:///path/to/dir``: embedded ClickHouse (chDB) in this process.

chDB runs one data path per process and refuses a second process on the
same path with an unhelpful error, so ``ChdbStore`` takes an exclusive lock
file in the data directory first and, when it is held, says which process
and role (``phobos serve``, ``phobos simulate`` ...) holds it.  Queries
run on a small pool of ``chdb.session.Session`` objects on that path, one
query per session at a time (parameterised queries are not safe on a
session used by two threads at once): a view's reads, ingest and the
resolution stage run side by side instead of waiting for each other, and
chDB releases the GIL while a query runs.  Sessions are made on demand, up
to ``SESSIONS`` (about 0.15 ms each here), and kept.  Inserts of Arrow
tables go through the ``Python()`` table function, which reads Arrow memory
in place (~millions of rows/s).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from api.storage.base import INSERT_SETTINGS, QUERY_SETTINGS, StoreBase, base_type, clean_error
from api.storage.interface import ReadLimits, Store, StoreBusyError, StoreError, StoreURL, sql_literal, sql_quote

__all__ = ["ChdbStore", "SESSIONS"]

#: Most sessions of one embedded store at once: a request's reads, ingest and
#: the resolution stage; more would only queue on the cores.
SESSIONS = 4

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
        self._new_session = chdb_session.Session
        try:
            self.session = self._open_session()
        except Exception as err:
            self._release()
            raise StoreError(f"cannot open the embedded store {path}: {err}") from None
        self._pool_of(self.session, SESSIONS)
        self.users = 0
        self.readers: list["_ChdbEngine"] = []  # read-only sessions on this path

    def _pool_of(self, session: Any, most: int) -> None:
        self.sessions = [session]
        self.idle = [session]
        self.most = most
        self.pool = threading.Condition()

    def _open_session(self) -> Any:
        session = self._new_session(self.path)
        # Numbers as JSON numbers: Python reads them exactly at any size.
        session.query("SET output_format_json_quote_64bit_integers = 0", "CSV")
        for name, value in QUERY_SETTINGS.items():
            session.query(f"SET {name} = {sql_literal(value)}", "CSV")
        return session

    @contextmanager
    def query_session(self) -> Iterator[Any]:
        """A session for one query (or one insert and its clean-up), nobody else's meanwhile."""
        with self.pool:
            while not self.idle and len(self.sessions) >= self.most:
                self.pool.wait()
            if self.idle:
                session = self.idle.pop()
            else:
                try:
                    session = self._open_session()
                except Exception as err:
                    raise StoreError(f"cannot open a session on the embedded store {self.path}: "
                                     f"{clean_error(err)}") from None
                self.sessions.append(session)
        try:
            yield session
        finally:
            with self.pool:
                self.idle.append(session)
                self.pool.notify()

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
        for session in self.sessions:
            session.close()
        self.sessions.clear()
        self.idle.clear()
        self._release()


class ChdbStore(StoreBase):
    """Embedded ClickHouse in this process (see the module docstring)."""

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
        with self.engine.query_session() as session:
            try:
                if params:
                    return session.query(sql, fmt, params=_chdb_params(params))
                return session.query(sql, fmt)
            except Exception as err:
                self._discard_partial_output(session)
                raise StoreError(clean_error(err)) from None

    @staticmethod
    def _discard_partial_output(session: Any) -> None:
        # chDB hands the partial output of a query that failed midway (row
        # limit, timeout) to the session's next query; a throwaway query
        # takes it while the session is still this caller's.
        try:
            session.query("SELECT 1", "CSV")
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
            settings += f", insert_deduplication_token = {sql_quote(dedup_token)}"
        # The Python() table function finds `phobos_insert_data` among this
        # frame's locals; that is how chDB reads Arrow memory without a copy.
        phobos_insert_data = data  # noqa: F841
        sql = f"INSERT INTO {self.db}.{table} ({cols}){settings} SELECT {exprs} FROM Python(phobos_insert_data)"
        with self.engine.query_session() as session:
            try:
                session.query(sql, "CSV")
            except Exception as err:
                self._discard_partial_output(session)
                raise StoreError(f"insert into {self.db}.{table} failed: {clean_error(err)}") from None
        return data.num_rows

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> Store:
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
        reader._pool_of(reader.session, 1)  # its settings are this session's: never a second
        reader.users = 1
        reader.readers = []
        try:
            for statement in (
                "SET output_format_json_quote_64bit_integers = 0",
                f"USE {self.db}",
                *(f"SET {k} = {sql_literal(v)}" for k, v in limits.settings().items()),
                "SET readonly = 1",  # last: from here on no setting can change
            ):
                reader.session.query(statement, "CSV")
        except Exception as err:
            reader.session.close()
            raise StoreError(f"cannot open a read-only session: {clean_error(err)}") from None
        self._owner = engine
        self._engine = reader
        with _CHDB_LOCK:
            engine.readers.append(reader)

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        raise StoreError("this session is read-only")

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> Store:
        raise StoreError("a read-only session opens no further sessions")

    def close(self) -> None:
        reader, self._engine = self._engine, None
        if reader is None:
            return
        with _CHDB_LOCK:
            if reader in self._owner.readers:
                self._owner.readers.remove(reader)
                reader.session.close()


def _select_expr(name: str, ch_type: str, arrow_type: pa.DataType) -> str:
    """Expression that turns an Arrow column into the target column's type."""
    col = f"`{name}`"
    base = base_type(ch_type)
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


def _chdb_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, datetime):
            value = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        elif isinstance(value, (list, tuple)):
            # An array is read as a literal: escapes inside its quoted strings.
            value = sql_literal(list(value))
        elif isinstance(value, str):
            # ClickHouse reads parameter values in its escaped (TSV) form: a
            # raw newline or tab is refused and a backslash starts an escape.
            value = value.translate(_ESCAPED_FORM)
        out[key] = value
    return out


_ESCAPED_FORM = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"})
