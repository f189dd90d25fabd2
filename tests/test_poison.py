"""One hostile record never stops ingestion: HTTP ingest and ``phobos load``.

The poison inputs are the ones that used to stop Phobos: a record nested
100,000 deep (Python's parser gives up with RecursionError), a ``"\\ud800"``
escape (a lone surrogate Arrow cannot encode), bytes that are not UTF-8, a
scoped IPv6 address. Each sits beside a good record; the good one is stored
exactly once (also when the batch is sent again), the bad ones are dead
letters with a reason. The Kafka consumer's path is in test_kafka_pipeline.py.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.app import create_app
from api.ingest.batches import ingest_batch
from api.ingest.decode import MAX_JSON_DEPTH, Undecodable, decode_body, decode_record
from factories import connection, listener
from tracer.records import RecordError, normalize_ip

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 100_000 + "]" * 100_000
SURROGATE = '{"v":1,"comm":"\\ud800"}'


def good_line(**overrides) -> str:
    return json.dumps(connection(**overrides))


def surrogate_record() -> str:
    """A whole, otherwise valid record whose comm is a lone surrogate escape."""
    return good_line(pid=666).replace('"comm": "curl"', '"comm": "\\ud800"')


def dead_letters(store) -> list[dict]:
    return store.query_dicts(f"SELECT source, kind, reason, length(raw) AS raw_len FROM {store.db}.dead_letters "
                             f"ORDER BY reason")


def stored_pids(store) -> list[int]:
    return [r[0] for r in store.query(f"SELECT pid FROM {store.db}.connections ORDER BY pid")]


@pytest.fixture
def client(store):
    return create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1"}).test_client()


def test_http_batch_with_poison_records_stores_the_good_one_once(client, store):
    body = ('{"batch_id": "b-1", "connections": [' + good_line(pid=1) + ", " + DEEP + ", "
            + surrogate_record() + ", " + good_line(pid=2, local_ip="fe80::1%eth0") + "], \"listeners\": ["
            + json.dumps(listener()) + "]}")
    for attempt in range(2):  # the tracer's sink retries: the second delivery changes nothing
        response = client.post("/api/v1/ingest", data=body, content_type="application/json")
        assert response.status_code == 200, response.get_data(as_text=True)
        out = response.get_json()
        assert out["connections"]["accepted"] == 1 and out["connections"]["rejected"] == 3
        assert out["listeners"]["accepted"] == 1
    assert stored_pids(store) == [1]
    reasons = [r["reason"] for r in dead_letters(store)]
    assert len(reasons) == 3, reasons
    assert any(f"nested deeper than {MAX_JSON_DEPTH}" in r for r in reasons)
    assert any("not valid Unicode" in r and "comm" in r for r in reasons)
    assert any("zone" in r and "local_ip" in r for r in reasons)


@pytest.mark.parametrize("path", ["/api/v1/ingest", "/api/v1/alerts", "/api/v2/spans", "/api/v1/sql"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.slow
def test_deep_bodies_are_a_400_not_a_500(client, path, depth):
    for body in ("[" * depth + "]" * depth, '{"a": ' + "[" * depth + "]" * depth + "}"):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 400, (path, response.get_data(as_text=True)[:200])
        message = response.get_json()["message"]
        # ingest cuts deep records out and then refuses the unknown field "a" instead
        assert "nested deeper" in message or (path == "/api/v1/ingest" and "unknown field(s) a" in message)


def test_undecodable_ingest_body_is_kept_as_a_dead_letter(client, store):
    response = client.post("/api/v1/ingest", data=b'{"connections": [\xff\xfe]}', content_type="application/json")
    assert response.status_code == 400 and "UTF-8" in response.get_json()["message"]
    (row,) = dead_letters(store)
    assert row["kind"] == "body" and row["source"] == "api" and "UTF-8" in row["reason"]


def test_alerts_and_spans_answer_503_when_the_store_fails(store):
    app = create_app({"STORE": store, "TESTING": True, "BIND_HOST": "127.0.0.1"})
    client = app.test_client()
    store.execute(f"RENAME TABLE {store.db}.alerts TO {store.db}.alerts_away")
    store.execute(f"RENAME TABLE {store.db}.spans TO {store.db}.spans_away")
    try:
        alert = {"version": "4", "status": "firing", "alerts": [
            {"status": "firing", "labels": {"alertname": "Down", "service": "web"},
             "startsAt": "2026-11-30T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f1"}]}
        response = client.post("/api/v1/alerts", json=alert)
        assert response.status_code == 503 and response.headers["Retry-After"]
        span = [{"traceId": "a" * 16, "id": "b" * 16, "kind": "CLIENT", "timestamp": 1_764_500_000_000_000,
                 "duration": 10, "localEndpoint": {"serviceName": "a"}, "remoteEndpoint": {"serviceName": "b"}}]
        response = client.post("/api/v2/spans", json=span)
        assert response.status_code == 503
    finally:
        store.execute(f"RENAME TABLE {store.db}.alerts_away TO {store.db}.alerts")
        store.execute(f"RENAME TABLE {store.db}.spans_away TO {store.db}.spans")


def test_phobos_load_keeps_going_past_poison_lines(store, chdb_dir, tmp_path):
    from api.commands.phobos import main

    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join([
        good_line(pid=1).encode(), DEEP.encode(), surrogate_record().encode(),
        b'{"v": 1, "comm": "\xff\xfe"}', b"not json", good_line(pid=2).encode(),
    ]) + b"\n")
    url = f"chdb://{chdb_dir}?database={store.db}"
    for attempt in range(2):
        assert main(["load", "--store", url, str(path)]) == 1  # some lines were refused
    assert stored_pids(store) == [1, 2]
    rows = dead_letters(store)
    assert len(rows) == 4, rows
    reasons = " | ".join(r["reason"] for r in rows)
    for expected in ("line 2: JSON nested deeper", "not valid Unicode", "line 4: not UTF-8", "line 5: not JSON"):
        assert expected in reasons
    assert all(r["source"] == f"load:{path}" for r in rows)


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413(tmp_path):
    """A body without Content-Length is still held to PHOBOS_MAX_BODY_BYTES, as a real server sees it."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PHOBOS_MAX_BODY_BYTES": str(1024 * 1024), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "api.commands.phobos", "serve", "--store", f"chdb://{tmp_path}/s",
                             "--port", str(port), "--migrate"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.3)

        def chunks():
            yield b'{"connections": ['
            piece = (good_line() + ",").encode()
            for _ in range(17 * 1024 * 1024 // len(piece) // 16):  # ~1.06 MiB
                yield piece * 16
            yield good_line().encode() + b"]}"

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/v1/ingest", body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413, response.read()[:300]
        assert "too large" in json.loads(response.read())["message"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_decoders_directly():
    assert isinstance(decode_record(DEEP), Undecodable)
    assert decode_record(b"\xff").reason.startswith("not UTF-8")
    assert decode_record('{"a": 1}') == {"a": 1}
    nested = '{"a": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}"
    assert "nested deeper" in decode_record(nested).reason
    # brackets and escaped quotes inside strings are not structure
    body = '{"c": [{"s": "]]\\"[[{"}, ' + DEEP + "]}"
    value = decode_body(body.encode(), records_at=3)
    assert value["c"][0] == {"s": ']]"[[{'} and isinstance(value["c"][1], Undecodable)
    # a forged placeholder is only a string
    forged = decode_body(b'{"c": ["\\u0000phobos-cut:00:0"]}', records_at=3)
    assert forged == {"c": ["\x00phobos-cut:00:0"]}
    with pytest.raises(ValueError, match="nested deeper"):
        decode_body(DEEP.encode())
    for scoped in ("fe80::1%eth0", "fe80::1%2"):
        with pytest.raises(RecordError, match="zone"):
            normalize_ip(scoped)


def test_ingest_batch_takes_undecodable_records_as_dead_letters(store):
    result = ingest_batch(store, "connections", [connection(pid=5), Undecodable(b"\xff", "not UTF-8"),
                                                 connection(pid="x")])
    assert result.accepted == 1 and [r.index for r in result.rejected] == [1, 2]
    assert stored_pids(store) == [5]
    assert len(dead_letters(store)) == 2
