"""The analysts' SQL endpoint: one read-only statement, under ClickHouse's own limits."""

from __future__ import annotations

import pytest

from api.analysts import sql as queries
from api.app import create_app
from api.storage import StoreError
from factories import connection
from tracer.records import CONNECTION_FIELDS


@pytest.fixture
def client(store):
    from api.ingest.batches import ingest_batch

    ingest_batch(store, "connections", [connection(pid=p) for p in range(1, 6)])
    app = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1", "SQL_MAX_ROWS": 100,
                      "SQL_MAX_SECONDS": 1})
    return app.test_client()


def sql(client, query, fmt=None, status=200):
    body = {"query": query}
    if fmt:
        body["format"] = fmt
    response = client.post("/api/v1/sql", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    return response


def test_select_json_and_csv(client, store):
    out = sql(client, f"SELECT pid FROM {store.db}.connections ORDER BY pid -- a comment").get_json()
    assert out == {"columns": ["pid"], "rows": [[1], [2], [3], [4], [5]], "count": 5}
    text = sql(client, f"WITH 2 AS k SELECT pid, pid * k AS d FROM {store.db}.connections "
                       f"ORDER BY pid LIMIT 2", "csv").get_data(as_text=True)
    assert text.splitlines() == ['"pid","d"', "1,2", "2,4"]
    assert sql(client, f"SHOW TABLES FROM {store.db}").get_json()["count"] > 5
    assert sql(client, f"DESCRIBE TABLE {store.db}.connections").get_json()["count"] == len(CONNECTION_FIELDS)
    assert sql(client, "EXPLAIN SELECT 1").get_json()["count"] >= 1


@pytest.mark.parametrize("query", [
    "INSERT INTO {db}.dead_letters (reason) VALUES ('x')",
    "INSERT INTO {db}.dead_letters (reason) SELECT 'x'",
    "WITH 1 AS x INSERT INTO {db}.dead_letters (reason) SELECT 'y'",
    "DROP TABLE {db}.connections",
    "TRUNCATE TABLE {db}.connections",
    "ALTER TABLE {db}.connections DELETE WHERE 1",
    "CREATE TABLE {db}.x (a UInt8) ENGINE = Memory",
    "SET readonly = 0",
    "SYSTEM DROP DNS CACHE",
    "OPTIMIZE TABLE {db}.connections",
    "SELECT 1; DROP TABLE {db}.connections",
    "SELECT 1; SELECT 2",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
    "SELECT * FROM file('/etc/passwd', LineAsString)",
    "SELECT * FROM url('http://127.0.0.1:1/', CSV, 'a String')",
    "SELECT 1 INTO OUTFILE '/tmp/phobos-sql-test'",
    "SELECT 1 FORMAT JSON",
    "SELEC 1",
    "   ",
])
@pytest.mark.slow
def test_refused(client, store, query):
    body = sql(client, query.format(db=store.db), status=400).get_json()
    assert body["code"] == 400 and body["message"]
    # nothing was written, and the shared session can still write
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 5
    store.insert_rows("dead_letters", [{"received_at": 2_000_000_000, "reason": "still writable"}])
    assert store.query(f"SELECT count() FROM {store.db}.dead_letters WHERE reason = 'still writable'")[0][0] == 1


@pytest.mark.slow
def test_limits(client, store):
    msg = sql(client, "SELECT number FROM system.numbers LIMIT 1000", status=400).get_json()["message"]
    assert "TOO_MANY_ROWS_OR_BYTES" in msg and "max rows: 100.00," in msg, msg
    msg = sql(client, "SELECT count() FROM system.numbers_mt WHERE sleepEachRow(0) = 0",
              status=400).get_json()["message"]
    assert "TIMEOUT_EXCEEDED" in msg and "maximum: 1000.000 ms" in msg, msg


@pytest.mark.parametrize("body", [{}, {"query": 5}, {"query": "SELECT 1", "format": "xml"}, [], "x"])
@pytest.mark.slow
def test_bad_body(client, body):
    response = client.post("/api/v1/sql", json=body)
    assert response.status_code == 400 and response.get_json()["code"] == 400


def test_readonly_setting_is_honoured_by_the_engine(store):
    """The mechanism itself: query-level readonly=1 stops writes and cannot be lifted inside."""
    with pytest.raises(StoreError, match="readonly"):
        store.query(f"INSERT INTO {store.db}.dead_letters (reason) SELECT 'x' SETTINGS readonly = 1")
    with pytest.raises(StoreError, match="readonly"):
        store.query("SELECT * FROM (SELECT * FROM file('/etc/passwd', LineAsString) SETTINGS readonly = 0) "
                    "SETTINGS readonly = 1")
    with pytest.raises(StoreError):
        store.query("SELECT 1 SETTINGS readonly = 0 SETTINGS readonly = 1")
    # ... which is why validate_sql refuses every SETTINGS clause: the last
    # setting of one clause wins, and a user's clause would come first.
    with pytest.raises(queries.SQLRefused):
        queries.validate_sql(store, "SELECT 1 SETTINGS readonly = 1, readonly = 0")
    # and the session was never made read-only
    store.insert_rows("dead_letters", [{"received_at": 2_000_000_000, "reason": "ok"}])
