"""The analysts' SQL cannot leave Phobos' tables, cannot lift its limits, and cannot starve the API.

Every attempt below is one an attacker would try: reading a file or a URL
through schema inference (``DESC file(...)``) in every spelling, through
subqueries, ``WITH``, ``EXPLAIN`` and joins; ``SHOW CREATE`` of what is not
Phobos'; dictionaries; Kafka queue tables; other databases.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from api.analysts.sql import ReaderPool, ReadersBusy, SQLRefused, validate_sql
from api.app import create_app
from api.storage import ReadLimits, StoreError
from factories import connection

# About sixty attempts, each on a freshly migrated store.
pytestmark = pytest.mark.slow

FILE = "/etc/passwd"


@pytest.fixture
def app(store):
    from api.ingest.batches import ingest_batch

    ingest_batch(store, "connections", [connection(pid=p) for p in range(1, 4)])
    return create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1", "SQL_MAX_SECONDS": 2,
                       "SQL_MAX_MEMORY": 256 * 1024**2})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def trap():
    """A loopback port that counts connections: a refused url() never reaches it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], hits
    stop.set()
    thread.join(2)
    srv.close()


ATTEMPTS = [
    "DESC file('{file}', 'TSVWithNames')",
    "DESCRIBE file('{file}', 'JSONEachRow')",
    "DESCRIBE TABLE file('{file}', 'CSV')",
    "desc   FILE ( '{file}' , 'TSV' )",
    "DESC (SELECT * FROM file('{file}', 'LineAsString'))",
    "SELECT * FROM file('{file}', 'LineAsString')",
    "SELECT * FROM (SELECT * FROM file('{file}', 'LineAsString'))",
    "WITH x AS (SELECT * FROM file('{file}', 'LineAsString')) SELECT * FROM x",
    "SELECT 1 WHERE 'a' IN (SELECT * FROM file('{file}', 'LineAsString'))",
    "SELECT * FROM {db}.connections AS c, file('{file}', 'LineAsString') AS f",
    "SELECT * FROM {db}.connections JOIN file('{file}', 'LineAsString') USING (pid)",
    "EXPLAIN SELECT * FROM file('{file}', 'LineAsString')",
    "EXPLAIN PLAN SELECT * FROM file('{file}', 'LineAsString')",
    "EXPLAIN QUERY TREE SELECT * FROM file('{file}', 'LineAsString')",
    "EXPLAIN AST DESC file('{file}')",
    "SELECT file('{file}')",
    "SELECT * FROM fileCluster('default', '{file}', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:{port}/x', 'CSV')",
    "SELECT * FROM input('a String')",
    "SELECT * FROM executable('cat {file}', 'TSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:{port}', system.one)",
    "SELECT * FROM merge('{db}', '.*')",
    "SELECT * FROM system.users",
    "SELECT * FROM system.processes",
    "SELECT * FROM system.settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM `system`.`query_log`",
    "SELECT 1 WHERE 1 GLOBAL IN system.users",
    "SHOW CREATE TABLE system.users",
    "SHOW CREATE system.processes",
    "SHOW CREATE DICTIONARY d",
    "SHOW PROCESSLIST",
    "SHOW GRANTS",
    "SHOW USERS",
    "SHOW COLUMNS FROM system.users",
    "EXISTS DICTIONARY d",
    "SELECT dictGet('d', 'a', 1)",
    "SELECT dictGetOrDefault('d', 'a', 1, 'x')",
    "SELECT * FROM dictionary('d')",
    "SELECT joinGet({db}.connections, 'pid', 1)",
    "SELECT * FROM default.t",
    "SELECT * FROM `a.b`.c",
    "SELECT 1 SETTINGS max_memory_usage = 0",
    "SELECT * FROM {db}.connections SETTINGS readonly = 0",
]


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_file_and_url_reads_are_refused(client, store, trap, attempt):
    port, hits = trap
    query = attempt.format(file=FILE, db=store.db, port=port)
    response = client.post("/api/v1/sql", json={"query": query})
    text = response.get_data(as_text=True)
    assert response.status_code == 400, text
    assert "root:" not in text and "/bin/" not in text
    assert not hits


@pytest.mark.parametrize("attempt", [
    "DESC url('http://127.0.0.1:{port}/', 'JSONEachRow')",
    "DESCRIBE TABLE url('http://127.0.0.1:{port}/x.csv')",
    "SELECT * FROM url('http://127.0.0.1:{port}/', 'CSV', 'a String')",
    "WITH u AS (SELECT * FROM url('http://127.0.0.1:{port}/', 'LineAsString')) SELECT * FROM u",
    "SELECT * FROM (SELECT 1) WHERE 1 IN (SELECT * FROM URL('http://127.0.0.1:{port}/', 'LineAsString'))",
    "EXPLAIN ESTIMATE SELECT * FROM url('http://127.0.0.1:{port}/', 'LineAsString')",
])
def test_url_is_never_fetched(client, trap, attempt):
    port, hits = trap
    started = time.monotonic()
    response = client.post("/api/v1/sql", json={"query": attempt.format(port=port)})
    assert response.status_code == 400 and "url" in response.get_json()["message"].lower()
    assert time.monotonic() - started < 5  # refused on the parse, not after a fetch
    time.sleep(0.3)
    assert not hits


def test_what_analysts_do_still_works(client, store):
    db = store.db

    def rows(query):
        response = client.post("/api/v1/sql", json={"query": query})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["rows"]

    assert rows("SELECT count() FROM connections") == [[3]]  # unqualified: Phobos' database
    assert rows("SELECT\n\tcount() -- how many\nFROM connections\nWHERE comm != 'a\\b'") == [[3]]
    assert rows(f"WITH c AS (SELECT pid FROM {db}.connections) SELECT max(pid) FROM c") == [[3]]
    assert rows(f"SELECT count() FROM {db}.connections WHERE pid IN (SELECT number FROM numbers(3))") == [[2]]
    assert len(rows(f"DESCRIBE TABLE {db}.edges_1m")) > 5
    assert "MergeTree" in rows(f"SHOW CREATE TABLE {db}.connections")[0][0]
    assert rows(f"EXISTS TABLE {db}.connections") == [[1]]
    assert rows(f"SELECT count() > 0 FROM system.tables WHERE database = '{db}'") == [[1]]
    assert rows(f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'connections' "
                f"AND name = 'pid'") == [["pid"]]
    assert len(rows(f"SHOW TABLES FROM {db}")) > 5
    assert rows("SELECT sum(number) FROM numbers(4)") == [[6]]
    assert rows(f"SELECT c.pid FROM {db}.connections AS c JOIN (SELECT 2 AS pid) AS t USING (pid)") == [[2]]


def test_tables_of_external_engines_are_refused(client, store):
    """A table in Phobos' database whose engine reaches outside (File, URL, Kafka) is not read."""
    store.execute(f"CREATE TABLE {store.db}.outside (line String) ENGINE = File(LineAsString)")
    store.execute(f"CREATE TABLE {store.db}.remote_one (a String) ENGINE = URL('http://127.0.0.1:1/', CSV)")
    for query in (f"SELECT * FROM {store.db}.outside", "SELECT * FROM outside",
                  f"DESCRIBE TABLE {store.db}.remote_one",
                  f"SELECT * FROM {store.db}.connections WHERE comm IN (SELECT line FROM outside)"):
        response = client.post("/api/v1/sql", json={"query": query})
        assert response.status_code == 400, query
        assert "cannot be read here" in response.get_json()["message"]


def test_the_reader_itself_is_read_only_and_its_limits_are_fixed(store):
    """Behind the parse check, the reader session refuses writes and setting changes."""
    reader = store.open_reader(ReadLimits(max_seconds=1, max_memory_bytes=128 * 1024**2))
    try:
        with pytest.raises(StoreError, match="(?i)readonly"):
            reader.query(f"INSERT INTO {store.db}.dead_letters (reason) SELECT 'x'")
        with pytest.raises(StoreError, match="(?i)readonly|Cannot modify"):
            reader.query("SET max_memory_usage = 0")
        with pytest.raises(StoreError, match="(?i)Cannot modify|readonly"):
            reader.query("SELECT 1 SETTINGS max_execution_time = 1000")
        assert reader.query("SELECT currentDatabase()") == [(store.db,)]
        with pytest.raises(StoreError):
            reader.insert_rows("dead_letters", [{"reason": "x"}])
    finally:
        reader.close()
    # the writer was never made read-only
    store.insert_rows("dead_letters", [{"received_at": 2_000_000_000, "reason": "writable"}])


def test_memory_limit_covers_the_query(client):
    response = client.post("/api/v1/sql", json={"query": "SELECT length(groupArray(randomString(100000000))) "
                                                         "FROM numbers(100)"})
    assert response.status_code == 400
    assert "memory limit" in response.get_json()["message"].lower()


def test_time_limit_covers_the_query(client):
    started = time.monotonic()
    response = client.post("/api/v1/sql", json={"query": "SELECT count() FROM system.numbers_mt "
                                                         "WHERE sipHash64(number) = 1"})
    assert response.status_code == 400 and "timeout" in response.get_json()["message"].lower()
    assert time.monotonic() - started < 10


def test_token_required_off_loopback(store):
    open_app = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "0.0.0.0"})
    response = open_app.test_client().post("/api/v1/sql", json={"query": "SELECT 1"})
    assert response.status_code == 403 and "PHOBOS_READ_TOKEN" in response.get_json()["message"]

    guarded = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "0.0.0.0", "READ_TOKEN": "r",
                          "TOKEN": "w"}).test_client()
    assert guarded.post("/api/v1/sql", json={"query": "SELECT 1"}).status_code == 401
    assert guarded.post("/api/v1/sql", json={"query": "SELECT 1"},
                        headers={"Authorization": "Bearer nope"}).status_code == 401
    for token in ("r", "w"):
        ok = guarded.post("/api/v1/sql", json={"query": "SELECT 1"}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.get_json()["rows"] == [[1]]
    # the read token is not a write token
    assert guarded.post("/api/v1/ingest", json={}, headers={"Authorization": "Bearer r"}).status_code == 401


def test_a_full_pool_answers_429_at_once(store):
    pool = ReaderPool(store, ReadLimits(max_seconds=5), size=1)
    try:
        with pool.reader():
            with pytest.raises(ReadersBusy):
                with pool.reader():
                    pass
        with pool.reader() as reader:  # freed again
            assert reader.query("SELECT 1") == [(1,)]
        assert pool.refused == 1
    finally:
        pool.close()


def test_heavy_sql_never_blocks_ingest_views_or_health(store):
    """Three heavy queries at once (two run, one is turned away): ingest, a view and
    /readyz answer while they run, on the store's own session."""
    app = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1", "SQL_MAX_SECONDS": 8})
    client = app.test_client()
    heavy = "SELECT count() FROM system.numbers_mt WHERE sipHash64(number) = 1"
    statuses: list[int] = []
    finished: list[float] = []

    def run_heavy():
        response = app.test_client().post("/api/v1/sql", json={"query": heavy})
        statuses.append(response.status_code)
        if response.status_code != 429:
            finished.append(time.monotonic())

    threads = [threading.Thread(target=run_heavy) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    answered = []
    for _ in range(2):
        assert client.get("/readyz").status_code == 200
        ingest = client.post("/api/v1/ingest", json={"connections": [connection(pid=99, ts=connection()["ts"])]})
        assert ingest.status_code == 200
        assert client.get("/api/v1/areas").status_code == 200
        answered.append(time.monotonic())
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [400, 400, 429]  # two ran into their time limit, one was turned away
    # everything else was answered before the heavy queries ended
    assert max(answered) < min(finished)


def test_validate_refuses_without_running(store):
    with pytest.raises(SQLRefused, match="table function file"):
        validate_sql(store, f"DESC file('{FILE}')")
