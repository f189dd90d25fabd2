"""Ad-hoc SQL for analysts that cannot leave Phobos' own tables.

What it guards against: ClickHouse's ``readonly`` stops writes, but not
reads of the outside world. ``DESC file('/etc/passwd', ...)`` reads a file to
guess its columns and echoes it back, ``url()`` makes the server send HTTP
requests, and both run their schema inference outside the query's time
limit. So a statement is decided on its parsed form, never on its text:

1. ClickHouse's parser gives the canonical one-line text
   (``formatQuerySingleLine``: comments gone, nothing can be appended and
   commented out) and its syntax tree (``EXPLAIN AST``, parse only - it reads
   nothing).
2. The tree is walked: only SELECT/WITH, EXPLAIN, DESCRIBE, SHOW TABLES,
   SHOW CREATE TABLE/VIEW and EXISTS TABLE are accepted; every table it names
   must be one of Phobos' tables (database ``store.db``, MergeTree family or
   views - never a Kafka queue, whose read would consume messages) or one of
   a few ``system`` tables that describe schema; table functions other than
   number generators, dictionaries, ``joinGet`` and ``file()`` are refused,
   and so are ``SETTINGS``, ``FORMAT`` and ``INTO OUTFILE`` clauses.
3. The canonical text runs on a read-only connection of its own
   (``Store.open_reader``): its current database is ``store.db``, its
   limits (time, memory, rows, result bytes, one thread) are ClickHouse
   settings set before ``readonly = 1``, so no query can lift them, and a
   small pool of such connections means a heavy query never waits for - or
   holds up - ingest, the views or ``/readyz``. When the pool is busy the
   caller is told so at once (``ReadersBusy``) rather than queued.

In server mode the reader should also log in as a user that can read only
the Phobos database (``sql/server/analyst.sql``), so the server's own access
control stands behind this check.
"""

from __future__ import annotations

import queue
import re
import threading
from contextlib import contextmanager
from typing import Iterator

from api.storage import ReadLimits, Store, StoreError

__all__ = ["SQLRefused", "ReadersBusy", "ReaderPool", "read_limits", "validate_sql", "run_sql", "SYSTEM_TABLES"]

#: Statements an analyst may run, by the name of the tree's root node.
_SELECTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery")
_ALLOWED_ROOTS = _SELECTS + ("Explain", "DescribeQuery", "ShowTables", "ShowCreateTableQuery",
                             "ShowCreateViewQuery", "ExistsTableQuery")
#: ``system`` tables that describe the schema and nothing else.
SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "tables", "columns",
                           "parts", "detached_parts", "functions", "data_type_families", "time_zones", "formats"})
#: Table functions that only generate numbers.
_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generateseries",
                              "generate_series", "values"})
#: Scalar functions that reach outside the query's tables.
_FUNCTION_PREFIXES = ("dict", "joinget")
_FUNCTIONS = frozenset({"file"})
#: ``a IN t``: the right side may name a table.
_IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin",
                           "globalnullin", "globalnotnullin"})
_READABLE_ENGINE = re.compile(r"^(\w*MergeTree|View|MaterializedView|Distributed)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$")
_NODE = re.compile(r"^(?P<indent> *)(?P<kind>\S+)(?: (?P<rest>.*?))?(?: \(children \d+\))?$")


def read_limits(cfg: dict) -> ReadLimits:
    """The limits of analysts' queries from ``api.config`` (``PHOBOS_SQL_*``)."""
    return ReadLimits(max_seconds=cfg["SQL_MAX_SECONDS"], max_memory_bytes=cfg["SQL_MAX_MEMORY"],
                      max_rows=cfg["SQL_MAX_ROWS"], max_result_bytes=cfg["SQL_MAX_BYTES"])


class SQLRefused(ValueError):
    """The text is not one statement the analysts' SQL may run; the message says why."""


class ReadersBusy(RuntimeError):
    """Every read-only connection of the pool is running a query."""


class ReaderPool:
    """A few read-only connections (``Store.open_reader``), opened on first use.

    Parameters
    ----------
    store : the store whose tables the readers read.
    limits : what each query may use.
    size : how many analysts' queries run at once; one more is refused.
    url : a server user made for analysts (``clickhouse://`` only).
    """

    def __init__(self, store: Store, limits: ReadLimits, size: int = 2, url: str | None = None):
        if size < 1:
            raise ValueError("the SQL reader pool needs at least one connection")
        self.store, self.limits, self.size, self.url = store, limits, size, url
        self._idle: queue.SimpleQueue[Store] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._opened: list[Store] = []
        self._lock = threading.Lock()
        self.refused = 0

    @contextmanager
    def reader(self, wait_s: float = 0.0) -> Iterator[Store]:
        """A reader for one query.

        Raises
        ------
        ReadersBusy
            When all ``size`` readers stay busy for ``wait_s`` seconds.
        """
        acquired = self._slots.acquire(timeout=wait_s) if wait_s > 0 else self._slots.acquire(blocking=False)
        if not acquired:
            with self._lock:
                self.refused += 1
            raise ReadersBusy(f"{self.size} analysts' queries are running already; retry when one ends")
        try:
            try:
                reader = self._idle.get_nowait()
            except queue.Empty:
                reader = self.store.open_reader(self.limits, self.url)
                with self._lock:
                    self._opened.append(reader)
            try:
                yield reader
            finally:
                self._idle.put(reader)
        finally:
            self._slots.release()

    def busy(self) -> int:
        """Readers running a query now."""
        return self.size - self._slots._value  # noqa: SLF001 - a gauge, read without the lock

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for reader in opened:
            reader.close()


def _parse(store: Store, text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Canonical text and tree nodes (depth, kind, rest) of ``text``."""
    try:
        canonical = store.query("SELECT formatQuerySingleLine({q:String})", {"q": text})[0][0]
    except StoreError as err:
        message = str(err)
        if "Multi-statements" in message:
            raise SQLRefused("only one statement per request") from None
        raise SQLRefused(f"cannot parse the query: {message}") from None
    if not canonical.strip():
        raise SQLRefused("the query is empty")
    try:
        lines = [row[0] for row in store.query(f"EXPLAIN AST {canonical}")]
    except StoreError as err:
        raise SQLRefused(f"cannot parse the query: {err}") from None
    nodes = []
    for line in lines:
        match = _NODE.match(line)
        if not match:
            raise SQLRefused("the query's syntax tree has a form this check does not know; refused")
        nodes.append((len(match["indent"]), match["kind"], (match["rest"] or "").strip()))
    return canonical, nodes


def _table_name(rest: str) -> str:
    """``x.t (alias a)`` -> ``x.t``; names this check cannot read are refused."""
    name = re.sub(r"\s*\(alias [^)]*\)$", "", rest).strip()
    if not _NAME.match(name):
        raise SQLRefused(f"table name {name!r} is not a plain [database.]table name; refused")
    return name


def _check_table(name: str, db: str, tables: set[str]) -> None:
    database, _, table = name.rpartition(".")
    if database in ("", db):
        tables.add(table)  # the reader's current database is db; CTE names land here too
    elif database == "system":
        if table not in SYSTEM_TABLES:
            raise SQLRefused(f"system.{table} is not readable here; readable system tables: "
                             f"{', '.join(sorted(SYSTEM_TABLES))}")
    else:
        raise SQLRefused(f"only Phobos' own tables ({db}.*) can be read, not {name}")


def validate_sql(store: Store, text: str) -> str:
    """Decide on ClickHouse's parse of ``text`` whether the analysts' SQL runs it.

    Parameters
    ----------
    store : the store (or a reader of it) whose parser and tables are used.
    text : one statement.

    Returns
    -------
    str
        The statement in ClickHouse's canonical one-line form, to be run as is.

    Raises
    ------
    SQLRefused
        With the reason: not one read-only statement, a table outside
        Phobos' database, a table function, dictionary or file access, a
        Kafka queue table, or a ``SETTINGS``/``FORMAT``/``INTO OUTFILE`` clause.
    """
    canonical, nodes = _parse(store, text)
    db = store.db
    root = nodes[0][1]
    if not root.startswith(_ALLOWED_ROOTS):
        raise SQLRefused(f"only read-only statements (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW TABLES, "
                         f"SHOW CREATE TABLE, EXISTS) are allowed, this is {root}")
    tables: set[str] = set()
    if root in ("ShowCreateTableQuery", "ShowCreateViewQuery", "ExistsTableQuery"):
        idents = [rest for depth, kind, rest in nodes[1:] if kind == "Identifier"]
        _check_table(".".join(idents[-2:]), db, tables)
    for index, (depth, kind, rest) in enumerate(nodes):
        parent = next((nodes[j][1] for j in range(index - 1, -1, -1) if nodes[j][0] < depth), None)
        if kind == "Set":
            raise SQLRefused("SETTINGS clauses are not allowed; the endpoint sets its own limits")
        if kind == "TableIdentifier":
            _check_table(_table_name(rest), db, tables)
        elif kind == "Function":
            name = rest.split(" ", 1)[0].lower()
            if parent == "TableExpression":
                if name not in _TABLE_FUNCTIONS:
                    raise SQLRefused(f"table function {name}() is not allowed: only Phobos' tables "
                                     f"can be read (number generators excepted)")
            elif name in _FUNCTIONS or name.startswith(_FUNCTION_PREFIXES):
                raise SQLRefused(f"function {name}() reads outside Phobos' tables and is not allowed")
            elif name in _IN_FUNCTIONS:
                _check_in_operand(nodes, index, db, tables)
        elif kind in ("SelectWithUnionQuery", "SelectIntersectExceptQuery"):
            # Children of a select besides its list of selects are INTO OUTFILE / FORMAT.
            children = _children(nodes, index)
            if [c for c in children if nodes[c][1] != "ExpressionList"]:
                raise SQLRefused("INTO OUTFILE and FORMAT clauses are not allowed; choose the "
                                 "format with the request's \"format\" field")
    _check_engines(store, tables)
    return canonical


def _children(nodes: list[tuple[int, str, str]], index: int) -> list[int]:
    depth = nodes[index][0]
    out = []
    for j in range(index + 1, len(nodes)):
        if nodes[j][0] <= depth:
            break
        if nodes[j][0] == depth + 1:
            out.append(j)
    return out


def _check_in_operand(nodes: list[tuple[int, str, str]], index: int, db: str, tables: set[str]) -> None:
    args = _children(nodes, index)
    operands = _children(nodes, args[0]) if args else []
    if len(operands) == 2 and nodes[operands[1]][1] == "Identifier":
        name = nodes[operands[1]][2]
        if "." in name:
            _check_table(_table_name(name), db, tables)


def _check_engines(store: Store, tables: set[str]) -> None:
    if not tables:
        return
    rows = store.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} AND has({t:Array(String)}, name)",
        {"db": store.db, "t": sorted(tables)},
    )
    for name, engine in rows:
        if not _READABLE_ENGINE.match(engine):
            hint = " (reading a Kafka queue table would consume its messages)" if engine == "Kafka" else ""
            raise SQLRefused(f"{store.db}.{name} is a {engine} table and cannot be read here{hint}")


def run_sql(reader: Store, text: str, fmt: str) -> tuple[list[str], list[tuple]] | str:
    """Validate ``text`` and run it on ``reader`` (a ``Store.open_reader`` connection).

    ``fmt`` is ``"json"`` (column names and rows) or a ClickHouse output
    format name (text). The reader's limits apply to the whole query.
    """
    canonical = validate_sql(reader, text)
    if fmt == "json":
        return reader.query_columns(canonical)
    return reader.query_text(canonical, fmt)
