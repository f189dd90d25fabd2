"""The store on real chDB: schema, rollups, replays, refusals, locking."""

import json
import random
import shutil
import subprocess
import sys

import pytest

from api.ingest.batches import ingest_batch
from api.storage import StoreError, open_store, parse_store_url
from api.storage.interface import sql_literal, sql_quote
from api.storage.migrations import SQL_DIR, render_sql, split_statements, table_ttl
from api.storage.server import driver_params
from factories import T0, connection, listener
from tracer.records import format_ts


def snapshot(store):
    """Everything migrate could change: table definitions and migration rows."""
    tables = store.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} ORDER BY name",
        {"db": store.db},
    )
    return tables, store.query(f"SELECT version, name, checksum FROM {store.db}.schema_migrations ORDER BY version")


def test_migrate_twice_changes_nothing(store):
    before = snapshot(store)
    assert store.migrate() == []
    assert snapshot(store) == before
    assert store.schema_version() == 11
    names = {name for name, _ in before[0]}
    assert {"connections", "listeners", "edges_1m", "edges_1h", "catalog_areas", "catalog_services",
            "alerts", "trace_edges", "dead_letters", "listener_spans", "spans", "resolved_calls_1m"} <= names


def test_ttl_is_configurable_and_idempotent(store):
    assert store.migrate(ttl_days=7) == ["connections: TTL 30 -> 7 days", "listeners: TTL 30 -> 7 days"]
    assert store.migrate(ttl_days=7) == []
    # A writer that only ensures the schema keeps the chosen retention.
    assert store.migrate() == []
    assert table_ttl(store, "connections") == 7
    with pytest.raises(StoreError, match="ttl_days"):
        store.migrate(ttl_days=0)


def test_span_ttl_is_configurable_in_hours(store):
    assert table_ttl(store, "spans", "HOUR") == 6
    assert store.migrate(span_ttl_hours=2) == ["spans: TTL 6 -> 2 hours"]
    assert store.migrate(span_ttl_hours=2) == [] and store.migrate() == []
    assert table_ttl(store, "spans", "HOUR") == 2
    with pytest.raises(StoreError, match="span_ttl_hours"):
        store.migrate(span_ttl_hours=0)


def test_edited_schema_file_is_refused(store, tmp_path):
    changed = tmp_path / "sql"
    shutil.copytree(SQL_DIR, changed)
    path = changed / "001_core.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(StoreError, match="append-only"):
        store.migrate(directory=changed)


def _fleet(n_records, seed=7):
    """Records over 3 hours, several pids and intervals per minute."""
    rng = random.Random(seed)
    records = []
    for i in range(n_records):
        ts = T0 + rng.randrange(0, 3 * 3600, 10)
        records.append(connection(
            ts=format_ts(ts), pid=rng.choice([100, 101, 102]), host=rng.choice(["h1", "h2"]),
            remote_ip=rng.choice(["10.0.0.2", "10.0.0.3", "fd00::5"]),
            connects=rng.randrange(0, 50), closes=rng.randrange(0, 50), failures=rng.randrange(0, 3),
            open=rng.randrange(0, 20), duration_ms_sum=rng.randrange(0, 10**6),
            direction=rng.choice(["outbound", "inbound"]),
        ))
    return records


SUMS = "sum(connects), sum(accepts), sum(closes), sum(failures), sum(duration_ms_sum)"


def totals(store, table, lo, hi):
    open_expr = "sum(toUInt64(open) * interval_s)" if table == "connections" else "sum(open_seconds)"
    return store.query(
        f"SELECT {SUMS}, {open_expr} FROM {store.db}.{table} "
        f"WHERE ts >= toDateTime({lo}, 'UTC') AND ts < toDateTime({hi}, 'UTC')"
    )[0]


def test_rollups_equal_raw_sums_for_the_same_window(store):
    result = ingest_batch(store, "connections", _fleet(3000), batch_id="b1")
    assert result.accepted == 3000
    for lo, hi in [(T0, T0 + 3 * 3600), (T0 + 3600, T0 + 7200), (T0 + 600, T0 + 1260)]:
        raw = totals(store, "connections", lo, hi)
        assert raw[0] > 0
        assert totals(store, "edges_1m", lo, hi) == raw
        if (hi - lo) % 3600 == 0 and lo % 3600 == 0:
            assert totals(store, "edges_1h", lo, hi) == raw


def test_open_seconds_average_is_time_weighted(store):
    # Two processes each hold 10 connections for a whole minute, reported
    # every 10 s: the minute's average must be 20 open, not 120. A record
    # is counted in the bucket that holds its ts (the interval end).
    recs = [connection(ts=format_ts(T0 + s), pid=pid, open=10, interval_s=10, connects=0)
            for s in range(0, 60, 10) for pid in (1, 2)]
    ingest_batch(store, "connections", recs)
    (avg,) = store.query(f"SELECT sum(open_seconds) / 60 FROM {store.db}.edges_1m WHERE ts = toDateTime({T0}, 'UTC')")[0]
    assert avg == 20


@pytest.mark.parametrize("batch_id", ["tracer-h1-42", None])
def test_replayed_batch_leaves_raw_and_rollups_unchanged(store, batch_id):
    batch = _fleet(500, seed=3)
    ingest_batch(store, "connections", batch, batch_id=batch_id)
    ingest_batch(store, "listeners", [listener()], batch_id=batch_id)
    before = [totals(store, t, T0, T0 + 4 * 3600) for t in ("connections", "edges_1m", "edges_1h")]
    spans = store.query(f"SELECT count() FROM {store.db}.listener_spans")
    for _ in range(2):
        ingest_batch(store, "connections", batch, batch_id=batch_id)
        ingest_batch(store, "listeners", [listener()], batch_id=batch_id)
    after = [totals(store, t, T0, T0 + 4 * 3600) for t in ("connections", "edges_1m", "edges_1h")]
    assert after == before
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 500
    assert store.query(f"SELECT count() FROM {store.db}.listener_spans") == spans
    # A different batch with the same records is new data and does count.
    ingest_batch(store, "connections", batch, batch_id="another")
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 1000


def test_bad_records_rejected_counted_and_kept_as_dead_letters(store):
    batch = [connection(pid=1), connection(remote_ip="not-an-ip"), connection(pid=3), {"v": 9}]
    result = ingest_batch(store, "connections", batch, batch_id="mixed", source="test")
    assert result.accepted == 2
    assert [(r.index, r.field) for r in result.rejected] == [(1, "remote_ip"), (3, "v")]
    assert sorted(r[0] for r in store.query(f"SELECT pid FROM {store.db}.connections")) == [1, 3]
    letters = store.query(f"SELECT source, kind, reason, raw FROM {store.db}.dead_letters ORDER BY reason")
    assert [(s, k) for s, k, _, _ in letters] == [("test", "connections")] * 2
    assert "record 1: field 'remote_ip'" in letters[0][2] and "not-an-ip" in letters[0][3]
    assert "unsupported record version 9" in letters[1][2]
    assert result.as_dict()["rejected"] == 2


def test_listener_spans_split_on_ip_reuse(store):
    # 10.0.0.9:8080 belongs to "old" until a deploy, then to "new".
    recs = [listener(ts=format_ts(T0 + m * 60), ip="10.0.0.9", service="old" if m < 30 else "new")
            for m in range(60)]
    ingest_batch(store, "listeners", recs)
    spans = store.query(
        f"SELECT service, min(first_seen), max(last_seen) FROM {store.db}.listener_spans "
        f"WHERE ip = toIPv6('10.0.0.9') GROUP BY service ORDER BY 2"
    )
    assert [s for s, _, _ in spans] == ["old", "new"]
    assert spans[0][2] < spans[1][1]


def test_query_values_are_json_ready(store):
    ingest_batch(store, "connections", [connection()])
    names, rows = store.query_columns(f"SELECT ts, remote_ip, direction, connects FROM {store.db}.connections")
    assert names == ["ts", "remote_ip", "direction", "connects"]
    assert rows == [(format_ts(T0 + 60).replace("T", " ").rstrip("Z"), "::ffff:10.0.0.2", "outbound", 1)]
    json.dumps(rows)
    assert store.query("SELECT {n:UInt64} * 2, {s:String}", {"n": 2**40, "s": "a'b"}) == [(2**41, "a'b")]


HOLD = """
import sys; sys.path.insert(0, {root!r})
from api.storage import open_store
store = open_store({url!r}, role="phobos serve")
print("held", flush=True)
sys.stdin.read()
"""
TRY = """
import sys; sys.path.insert(0, {root!r})
from api.storage import open_store, StoreBusyError
try:
    open_store({url!r}).close()
    print("opened")
except StoreBusyError as e:
    print(e)
"""


@pytest.mark.slow
def test_second_process_is_told_who_holds_the_store(tmp_path):
    url = f"chdb://{tmp_path / 'held'}"
    root = str(SQL_DIR.parent)
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=root, url=url)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run([sys.executable, "-c", TRY.format(root=root, url=url)],
                             capture_output=True, text=True, timeout=60).stdout
        assert f"the embedded store {tmp_path / 'held'} is in use by process {holder.pid} (phobos serve" in out
    finally:
        holder.communicate("", timeout=60)
    # Released when the holder is gone: the next process opens it.
    out = subprocess.run([sys.executable, "-c", TRY.format(root=root, url=url)],
                         capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "opened"


def test_one_data_directory_per_process(store, tmp_path):
    with pytest.raises(StoreError, match="one\\s+data directory per process"):
        open_store(f"chdb://{tmp_path / 'other'}")


@pytest.mark.parametrize(
    "url, words",
    [
        ("/data/phobos", "no scheme"),
        ("mysql://x", "unknown store scheme"),
        ("chdb://", "names no directory"),
        ("clickhouse:///phobos", "names no host"),
        ("chdb://./d?database=default", "not 'default'"),
        ("chdb://./d?database=a;b", "not a plain identifier"),
        ("clickhouse://h:99999/x", "bad port"),
    ],
)
def test_bad_store_urls(url, words):
    with pytest.raises(StoreError, match=words):
        parse_store_url(url)


def test_store_url_forms():
    u = parse_store_url("clickhouse://bob:s%40cret@ch.example:9440/metrics?secure=1")
    assert (u.host, u.port, u.user, u.password, u.database, u.secure) == ("ch.example", 9440, "bob", "s@cret", "metrics", True)
    assert "s@cret" not in u.redacted()
    assert parse_store_url("chdb:///var/lib/phobos").path == "/var/lib/phobos"


def test_driver_parameter_translation():
    sql, values = driver_params("SELECT {at:DateTime} + 1 WHERE x LIKE '%a'", {"at": "2026-01-01 00:00:00"})
    assert sql == "SELECT CAST(%(at)s AS DateTime) + 1 WHERE x LIKE '%%a'"
    assert values == {"at": "2026-01-01 00:00:00"}
    with pytest.raises(StoreError, match="no value"):
        driver_params("SELECT {x:UInt8}", {"y": 1})


def test_schema_files_render_completely():
    from api.storage.migrations import schema_files

    for _, _, path in schema_files():
        for statement in split_statements(render_sql(path.read_text(), db="phobos", ttl_days=30, span_ttl_hours=6)):
            assert "$" not in statement
    with pytest.raises(StoreError, match="placeholder"):
        render_sql("CREATE DATABASE $db", ttl_days=1)


def test_cluster_variant_is_parsed_by_clickhouse(store):
    from api.storage.migrations import clustered_statements, schema_files, schema_statements

    statements = []
    for _, _, path in schema_files():
        statements += schema_statements(path.read_text(), "phobos", 30, cluster="prod")
    for statement in statements:
        ast = store.query(f"EXPLAIN AST {statement}")
        if statement.startswith("INSERT INTO"):
            # a back-fill, run once through the Distributed tables
            assert ast and ast[0][0].startswith("InsertQuery")
            continue
        assert " ON CLUSTER prod" in statement
        assert ast and ast[0][0].startswith(("CreateQuery", "AlterQuery"))
    text = "\n".join(statements)
    assert "ENGINE = MergeTree" not in text and "ENGINE = SummingMergeTree" not in text
    assert "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/phobos/edges_1m_local', '{replica}')" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/phobos/alerts_local', '{replica}', received_at)" in text
    assert "Distributed(prod, phobos, connections_local, rand())" in text
    mv = next(s for s in statements if s.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS phobos.edges_1m_mv"))
    assert "TO phobos.edges_1m_local" in mv and "FROM phobos.connections_local" in mv
    # a view over another file's table reads its local table too
    mv = next(s for s in statements if s.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS phobos.service_presence_listeners_mv"))
    assert "TO phobos.service_presence_local" in mv and "FROM phobos.listeners_local" in mv
    assert "ALTER TABLE phobos.dead_letters_local ON CLUSTER prod MODIFY SETTING" in text
    with pytest.raises(StoreError, match="clustered"):
        clustered_statements(["DROP TABLE x"], "phobos", "prod")
    with pytest.raises(StoreError, match="cluster name"):
        store.migrate(cluster="bad name")


def test_cluster_variant_adds_columns_to_the_local_and_the_distributed_table(store):
    """A column added by a later file reaches the replicated tables and the Distributed
    table over them (a Distributed table keeps the columns it was created with)."""
    from api.storage.migrations import SQL_DIR, clustered_statements, schema_statements

    statements = schema_statements((SQL_DIR / "006_nat.sql").read_text(), "phobos", 30, cluster="prod")
    assert statements[:2] == [
        "ALTER TABLE phobos.connections_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS nat_ip IPv6 "
        "DEFAULT toIPv6('::')",
        "ALTER TABLE phobos.connections ON CLUSTER prod ADD COLUMN IF NOT EXISTS nat_ip IPv6 "
        "DEFAULT toIPv6('::')",
    ]
    assert [s.split(" ADD ")[0] for s in statements[2:]] == [
        "ALTER TABLE phobos.connections_local ON CLUSTER prod", "ALTER TABLE phobos.connections ON CLUSTER prod"]
    for statement in statements:
        assert store.query(f"EXPLAIN AST {statement}")[0][0].startswith("AlterQuery")
    # settings stay on the replicated table; a table that is not MergeTree keeps its name
    assert clustered_statements(["ALTER TABLE d.t MODIFY SETTING x = 1"], "d", "c", local={"d.t"}) == [
        "ALTER TABLE d.t_local ON CLUSTER c MODIFY SETTING x = 1"]
    assert clustered_statements(["ALTER TABLE d.v MODIFY COMMENT 'x'"], "d", "c", local=set()) == [
        "ALTER TABLE d.v ON CLUSTER c MODIFY COMMENT 'x'"]


def test_nat_columns_are_added_to_a_store_made_before_them(chdb_dir, tmp_path):
    """A store migrated before 006 gets the columns; its older rows read the defaults."""
    from api.storage.migrations import migrate

    for path in SQL_DIR.glob("00[1-5]_*.sql"):
        shutil.copy(path, tmp_path)
    old = open_store(f"chdb://{chdb_dir}?database=t_before_nat", role="pytest")
    try:
        migrate(old, directory=tmp_path)
        assert old.schema_version() == 5
        # a row as a writer of that schema inserts it: without the columns
        from api.ingest.contract import records_to_arrow
        from tracer.records import validate

        row = records_to_arrow("connections", [validate("connections", connection())])
        old.insert_arrow("connections", row.drop_columns(["nat_ip", "nat_port", "handshakes", "handshake_us_sum",
                                                          "handshake_hist", "retransmits", "aborts"]))
        old.close()
        # the next version of the writer starts: it migrates, then writes
        old = open_store(f"chdb://{chdb_dir}?database=t_before_nat", role="pytest")
        assert migrate(old) == ["applied 006_nat.sql", "applied 007_virtual.sql", "applied 008_health.sql",
                                "applied 009_resolved_health.sql", "applied 010_minute_book.sql",
                                "applied 011_resolved_pairs.sql"]
        assert old.schema_version() == 11
        ingest_batch(old, "connections", [connection(pid=2, nat_ip="10.96.0.10", nat_port=80)], batch_id="after")
        rows = old.query(f"SELECT pid, toString(nat_ip), nat_port FROM {old.db}.connections ORDER BY pid")
        assert rows == [(2, "::ffff:10.96.0.10", 80), (100, "::", 0)]
    finally:
        old.close()


@pytest.mark.parametrize("value", ["a\nb", "a\\'b", "tab\there", "a\\nb", "x'y", "\\", "cr\r nul\0", "é ✓"])
@pytest.mark.slow
def test_string_parameters_arrive_exactly(store, value):
    """Query parameters reach ClickHouse unchanged, whatever escapes they hold."""
    assert store.query("SELECT {q:String}", {"q": value}) == [(value,)]
    assert store.query("SELECT {q:Array(String)}", {"q": [value, "z"]}) == [([value, "z"],)]
    assert store.query("SELECT {q:Array(Tuple(String, UInt8))}", {"q": [(value, 1)]}) == [([[value, 1]],)]
    # ... and so do the literals written into SQL text
    assert store.query(f"SELECT {sql_quote(value)}, {sql_literal([(value, 2), ('z', 3)])}") == \
        [(value, [[value, 2], ["z", 3]])]


def test_service_presence_follows_records_and_is_back_filled_for_older_stores(store, tmp_path):
    """First/last seen of a service: exact from records as they arrive; from
    the minute rollup and listener spans for a store written before the table."""
    from api.views import reads

    def text(ts: int) -> str:
        return format_ts(ts).replace("T", " ").rstrip("Z")

    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(SQL_DIR.glob("00[1-4]_*.sql")):
        shutil.copy(path, older)
    s = open_store(f"chdb://{store.url.path}?database={store.db}_old", role="pytest")
    try:
        s.migrate(directory=older)
        # rows as that schema held them (today's records may carry newer fields)
        for table, at in (("connections", T0 + 75), ("connections", T0 + 3725), ("listeners", T0 + 30)):
            s.execute(f"INSERT INTO {s.db}.{table} (v, ts, service) VALUES (1, toDateTime({at}, 'UTC'), 'web')")
        s.migrate()  # adds service_presence and back-fills it: to the minute, never later than a record
        assert reads.service_seen(s, "web") == {"first_seen": text(T0 + 30), "last_seen": text(T0 + 3720)}
        ingest_batch(s, "connections", [connection(ts=format_ts(T0 + 7207), service="web")])
        assert reads.service_seen(s, "web")["last_seen"] == text(T0 + 7207)
        assert reads.service_seen(s, "nobody") == {"first_seen": None, "last_seen": None}
    finally:
        s.close()
