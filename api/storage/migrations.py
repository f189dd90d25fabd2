"""The schema: ``sql/`` files applied once each, by one runner, for two sets of files.

* **The core set** (``sql/NNN_name.sql``): every table, rollup and view
  Phobos reads and writes, on every ClickHouse.  Applied files are recorded
  in ``$db.schema_migrations`` with the checksum of their text, and refused
  if they were edited afterwards - schema files are append-only.  The same
  files give the clustered variant (``clustered_statements``).
* **The Kafka-engine set** (``sql/kafka/NNN_name.sql``): queues and
  materialized views with which a ClickHouse server consumes the record
  topics itself.  Its files are templates of the brokers, topics and
  consumer group, so ``$db.kafka_migrations`` records the checksum of the
  rendered text: run again with the same settings it changes nothing, with
  others the file's queues and views are dropped and made anew (tables
  holding data are kept).

Both go through ``_apply``: skip what the ledger holds with the same
checksum, deal with a changed file the set's way, run the statements,
record the file.  Caveat: a file that fails half-way is not recorded and
runs again from its first statement next time, so every statement is
written to be repeatable (``IF NOT EXISTS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from api.storage.interface import IDENTIFIER, Store, StoreError, sql_escape, sql_quote

__all__ = [
    "SQL_DIR",
    "KAFKA_SQL_DIR",
    "DEFAULT_TTL_DAYS",
    "DEFAULT_SPAN_TTL_HOURS",
    "schema_files",
    "render_sql",
    "split_statements",
    "schema_statements",
    "clustered_statements",
    "analyst_user_statements",
    "migrate",
    "schema_version",
    "table_ttl",
    "apply_kafka_schema",
    "kafka_schema_statements",
]

log = logging.getLogger("phobos.store")

#: ``sql/`` sits next to the ``api`` package both in a checkout and in an
#: installed distribution (setup.cfg installs it as a data package beside ``api``).
SQL_DIR = Path(__file__).resolve().parent.parent.parent / "sql"
KAFKA_SQL_DIR = SQL_DIR / "kafka"
DEFAULT_TTL_DAYS = 30
#: Trace spans are kept this long (hours): they only wait for their parents.
DEFAULT_SPAN_TTL_HOURS = 6

_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


# -- schema files ------------------------------------------------------------------------------

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
_COLUMN_CHANGE = re.compile(r"^\s+(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b", re.I)
_ENGINE = re.compile(r"ENGINE = (?P<kind>\w*)MergeTree(?:\((?P<args>[^)]*)\))?")


def schema_statements(text: str, db: str, ttl_days: int, cluster: str | None = None,
                      span_ttl_hours: int = DEFAULT_SPAN_TTL_HOURS) -> list[str]:
    """The statements of one schema file, single-node or for ``cluster``."""
    statements = split_statements(render_sql(text, db=db, ttl_days=ttl_days, span_ttl_hours=span_ttl_hours))
    if not cluster:
        return statements
    # A view in one file may read a table another file made: all files' tables count.
    tables = [s for _, _, path in schema_files() for s in split_statements(
        render_sql(path.read_text(), db=db, ttl_days=ttl_days, span_ttl_hours=span_ttl_hours))]
    return clustered_statements(statements, db, cluster, local=_merge_tree_tables(tables))


def _merge_tree_tables(statements: Iterable[str]) -> set[str]:
    """The ``*MergeTree`` tables the statements create (the clustered form makes each ``x_local``)."""
    return {m["name"] for stmt in statements
            if (m := _CREATE.match(stmt)) and m["what"] == "TABLE" and _ENGINE.search(stmt)}


def clustered_statements(statements: list[str], db: str, cluster: str, local: set[str] | None = None) -> list[str]:
    """Rewrite single-node DDL for a sharded, replicated cluster.

    The same schema files serve both: every ``*MergeTree`` table ``x``
    becomes ``x_local`` (``Replicated*MergeTree`` with the usual
    ``{shard}``/``{replica}`` macros) plus a ``Distributed`` table ``x`` over
    it, so readers and writers keep using ``x``; materialized views read
    and write the local tables, so each shard rolls up its own rows; every
    statement runs ``ON CLUSTER``. Inserts through the Distributed tables
    should use ``insert_distributed_sync = 1`` so that deduplication tokens
    reach the replicas. ``local``: the tables made ``x_local`` (default the
    ``*MergeTree`` tables of ``statements``) - views over them read and
    write the local ones. An ``ALTER`` of such a table alters ``x_local``,
    and ``x`` as well when it changes columns (a Distributed table does not
    follow its local tables' columns). A back-fill (``INSERT``) runs once,
    unchanged.
    """
    local = (set(local) if local is not None else set()) | _merge_tree_tables(statements)
    out = []
    for stmt in statements:
        if stmt.lstrip().upper().startswith("INSERT INTO"):
            # A back-fill: once, from this node, through the Distributed tables.
            out.append(stmt)
            continue
        alter = _ALTER.match(stmt)
        if alter:
            name, rest = alter["name"], alter["rest"]
            if name not in local:
                out.append(f"ALTER TABLE {name} ON CLUSTER {cluster}{rest}")
                continue
            # Settings and TTLs belong to the replicated tables. Columns too,
            # but a Distributed table keeps the column list it was created
            # with: it is changed the same way, after the tables it reads.
            out.append(f"ALTER TABLE {name}_local ON CLUSTER {cluster}{rest}")
            if _COLUMN_CHANGE.match(rest):
                out.append(f"ALTER TABLE {name} ON CLUSTER {cluster}{rest}")
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
        if not IDENTIFIER.match(name):
            raise StoreError(f"{what} name {name!r} is not a plain identifier")
    if not password:
        raise StoreError("the analysts' user needs a password (PHOBOS_SQL_PASSWORD)")
    text = (SQL_DIR / "server" / "analyst.sql").read_text()
    return split_statements(render_sql(text, db=db, user=user, password=sql_quote(password),
                                       on_cluster=f"ON CLUSTER {cluster}" if cluster else ""))


# -- the runner --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    """One schema file as the runner applies it."""

    key: Any                            # what the ledger knows it by
    label: str                          # how a change names it
    checksum: str
    statements: Callable[[], list[str]]  # rendered only when it is applied
    row: dict[str, Any]                 # its ledger row


def _apply(store: Store, ledger: str, files: Iterable[_File], applied: Mapping[Any, str],
           changed: Callable[[_File], None]) -> list[str]:
    """Apply the ``files`` that ``applied`` (ledger key -> checksum) lacks or
    holds with another checksum; ``changed`` deals with the latter first."""
    changes = []
    for file in files:
        if file.key in applied:
            if applied[file.key] == file.checksum:
                continue
            changed(file)
        note = ""
        for statement in file.statements():
            note = _execute(store, statement) or note
        store.insert_rows(ledger, [file.row])
        changes.append(f"applied {file.label}{note}")
    return changes


def _execute(store: Store, statement: str) -> str:
    """Run one statement; a note for the change when the store got it half right."""
    try:
        store.execute(statement)
    except StoreError as err:
        name = _created_object(statement)
        if not (name and "ENGINE = Kafka" in statement and store.url.scheme == "chdb" and _exists(store, name)):
            raise
        # chDB (chdb-core 26.9) reports "Shutdown was called" while creating
        # a Kafka engine table, yet creates it and its consumer runs (the
        # tests check it end to end).
        log.warning("chDB reported %r creating %s; the table exists and is used", str(err), name)
        return "; chDB reported an error creating the Kafka tables but created them"
    return ""


def _exists(store: Store, name: str) -> bool:
    db, _, table = name.rpartition(".")
    return bool(store.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": db or store.db, "t": table},
    )[0][0])


def _created_object(statement: str) -> str | None:
    words = statement.split()
    for i, word in enumerate(words[:-3]):
        if word.upper() == "EXISTS" and words[i - 1].upper() == "NOT" and words[i - 2].upper() == "IF":
            return words[i + 1]
    return None


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the core set ------------------------------------------------------------------------------

def migrate(store: Store, ttl_days: int | None = None, directory: Path | None = None, cluster: str | None = None,
            span_ttl_hours: int | None = None) -> list[str]:
    """Apply the core schema files not yet applied to ``store``; returns what it changed.

    Idempotent: files already recorded are skipped (and refused if they
    were edited after being applied - schema files are append-only).
    ``ttl_days`` sets the raw-record retention: new tables get it (30
    when None), existing ones are altered only when it is given and
    differs, so a writer that merely ensures the schema never resets a
    retention someone chose; ``span_ttl_hours`` the same for trace
    spans. ``cluster`` applies the clustered variant of the same files
    (see ``clustered_statements``).
    """
    directory = SQL_DIR if directory is None else directory
    explicit_ttl = ttl_days is not None
    ttl_days = DEFAULT_TTL_DAYS if ttl_days is None else ttl_days
    if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 36500:
        raise StoreError(f"ttl_days must be a whole number of days from 1 to 36500, got {ttl_days!r}")
    explicit_span_ttl = span_ttl_hours is not None
    span_ttl_hours = DEFAULT_SPAN_TTL_HOURS if span_ttl_hours is None else span_ttl_hours
    if (isinstance(span_ttl_hours, bool) or not isinstance(span_ttl_hours, int)
            or not 1 <= span_ttl_hours <= 24 * 365):
        raise StoreError(f"span_ttl_hours must be a whole number of hours from 1 to 8760, got {span_ttl_hours!r}")
    if cluster is not None and not IDENTIFIER.match(cluster):
        raise StoreError(f"cluster name {cluster!r} is not a plain identifier")
    found = schema_files(directory)
    if not found:
        raise StoreError(f"no schema files found in {directory}")
    applied: dict[int, str] = {}
    if _has_migrations_table(store):
        applied = dict(store.query(f"SELECT version, checksum FROM {store.db}.schema_migrations"))

    def core_file(version: int, name: str, path: Path) -> _File:
        text = path.read_text()
        checksum = _checksum(text)
        return _File(version, path.name, checksum,
                     lambda: schema_statements(text, store.db, ttl_days, cluster, span_ttl_hours),
                     {"version": version, "name": name, "checksum": checksum, "applied_at": int(time.time())})

    def refuse(file: _File) -> None:
        raise StoreError(
            f"{file.label} changed after it was applied to {store.db}; schema files are "
            f"append-only - put the change in a new numbered file"
        )

    changes = _apply(store, "schema_migrations", (core_file(*f) for f in found), applied, refuse)
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    wanted = ([(t, ttl_days, "DAY") for t in ("connections", "listeners")] if explicit_ttl else []) + (
        [("spans", span_ttl_hours, "HOUR")] if explicit_span_ttl else [])
    for table, value, unit in wanted:
        table = f"{table}_local" if cluster else table
        current = table_ttl(store, table, unit)
        if current is not None and current != value:
            store.execute(f"ALTER TABLE {store.db}.{table}{on_cluster} MODIFY TTL ts + INTERVAL {value} {unit}")
            changes.append(f"{table}: TTL {current} -> {value} {unit.lower()}s")
    return changes


def schema_version(store: Store) -> int:
    """Highest applied core schema file number; 0 for an empty store."""
    if not _has_migrations_table(store):
        return 0
    return int(store.query(f"SELECT max(version) FROM {store.db}.schema_migrations")[0][0])


def _has_migrations_table(store: Store) -> bool:
    return bool(
        store.query(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
            {"db": store.db},
        )[0][0]
    )


def table_ttl(store: Store, table: str, unit: str = "DAY") -> int | None:
    """The ``ts`` TTL of ``db.table`` in ``unit``s (None: no such table or TTL)."""
    rows = store.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": store.db, "t": table},
    )
    if not rows:
        return None
    match = re.search(rf"TTL ts \+ toInterval{unit.title()}\((\d+)\)", rows[0][0])
    return int(match.group(1)) if match else None


# -- the Kafka-engine set ----------------------------------------------------------------------

def _kafka_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:3].isdigit())


def _kafka_values(db: str, brokers: str, group: str, topics: Mapping[str, str], ttl_days: int) -> dict[str, Any]:
    return dict(db=db, brokers=sql_escape(brokers), group=sql_escape(group), ttl_days=int(ttl_days),
                topic_connections=sql_escape(topics["connections"]),
                topic_listeners=sql_escape(topics["listeners"]))


def apply_kafka_schema(store: Store, *, brokers: str, group: str, topics: Mapping[str, str],
                       ttl_days: int = DEFAULT_TTL_DAYS, directory: Path = KAFKA_SQL_DIR,
                       allow_embedded: bool = False) -> list[str]:
    """Apply the Kafka-engine set to ``store`` (after ``migrate``); returns what changed.

    ``topics`` maps record kind (``connections``, ``listeners``) to topic.
    Refused on an embedded (chDB) store unless ``allow_embedded``: chDB
    (chdb-core 26.9) runs Kafka engine tables within the session that
    created them, but a data directory holding them no longer opens
    ("Load job 'startup table ..._queue' failed: Shutdown was called").
    The tests create, exercise and drop them in one session.
    """
    if store.url.scheme == "chdb" and not allow_embedded:
        raise StoreError(
            "the embedded store (chDB) cannot keep Kafka engine tables: a chDB data directory holding them "
            "fails to open again; consume Kafka into it with `phobos ingest --kafka BROKERS` instead "
            "(--kafka is for ClickHouse servers)"
        )
    values = _kafka_values(store.db, brokers, group, topics, ttl_days)
    store.execute(
        f"CREATE TABLE IF NOT EXISTS {store.db}.kafka_migrations (name String, checksum String, "
        f"settings String, applied_at DateTime('UTC') DEFAULT now()) ENGINE = ReplacingMergeTree(applied_at) "
        f"ORDER BY name"
    )
    applied = dict(store.query(
        f"SELECT name, argMax(checksum, applied_at) FROM {store.db}.kafka_migrations GROUP BY name"))
    paths = _kafka_files(directory)
    if not paths:
        raise StoreError(f"no Kafka schema files in {directory}")
    settings = json.dumps({k: v for k, v in values.items() if k != "db"}, sort_keys=True)

    def kafka_file(path: Path) -> _File:
        text = render_sql(path.read_text(), **values)
        checksum = _checksum(text)
        return _File(path.name, f"kafka/{path.name} (brokers {brokers}, group {group})", checksum,
                     lambda: split_statements(text),
                     {"name": path.name, "checksum": checksum, "applied_at": int(time.time()), "settings": settings})

    def recreate(file: _File) -> None:
        # Settings changed: queues and views are made anew, data tables stay.
        for statement in file.statements():
            name = _created_object(statement)
            if name and ("ENGINE = Kafka" in statement or "MATERIALIZED VIEW" in statement):
                store.execute(f"DROP TABLE IF EXISTS {name}")

    return _apply(store, "kafka_migrations", (kafka_file(p) for p in paths), applied, recreate)


def kafka_schema_statements(db: str, *, brokers: str, group: str, topics: Mapping[str, str],
                            ttl_days: int = DEFAULT_TTL_DAYS, directory: Path = KAFKA_SQL_DIR) -> list[str]:
    """The statements ``apply_kafka_schema`` would run on an empty store (for ``--print-ddl``)."""
    values = _kafka_values(db, brokers, group, topics, ttl_days)
    return [stmt for path in _kafka_files(directory) for stmt in split_statements(render_sql(path.read_text(), **values))]
