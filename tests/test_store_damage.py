"""Store damage is loud: broken parts and damaged deduplication logs reach the log, /readyz and /metrics.

The damage is made the way it happens: a store with rows is closed, a file
is cut short on disk, and the store is opened again by a *new process*
(``phobos serve``), whose ClickHouse loads the tables from disk. The test
process itself never opens those directories: chDB runs one data directory
per process, and this module's fixtures already hold one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from api.storage.damage import DAMAGE_REASONS, DamageReport, DedupLogDamage, check_dedup_log, check_store
from test_api_serve import free_port, post, wait_ready

# Stores are made, damaged and served by processes of their own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

MAKE = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from api.storage import open_store
from api.ingest.batches import ingest_batch
from factories import connection
from tracer.records import format_ts
T0 = {t0}
store = open_store({url!r}, role="pytest")
store.migrate()
for b in range(3):
    ingest_batch(store, "connections", [connection(ts=format_ts(T0 + 60 * b + i % 60), pid=i) for i in range(300)],
                 batch_id=f"b{{b}}")
parts = store.query("SELECT name, path FROM system.parts WHERE database = 'phobos' AND table = 'connections' "
                    "AND active ORDER BY name")
(path,) = store.query("SELECT data_paths[1] FROM system.tables WHERE database = 'phobos' AND name = 'connections'")[0]
store.close()
print(json.dumps({{"parts": parts, "table_path": path}}))
"""


def make_store(directory: Path) -> dict:
    """A closed store with three batches of 300 connection rows, one part each.

    The rows are stamped with this process's ``factories.T0``: a replay of the
    same batches must land in the same day partition, hence the same block ids,
    even when the hour turned between this session's start and the child's.
    """
    from factories import T0

    url = f"chdb://{directory}"
    script = MAKE.format(root=str(ROOT), tests=str(ROOT / "tests"), url=url, t0=T0)
    out = subprocess.run([sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(made["parts"]) == 3
    return made


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def sql(port: int, query: str) -> list:
    status, body = post(port, "/api/v1/sql", {"query": query})
    assert status == 200, body
    return body["rows"]


class Served:
    """``phobos serve`` on a store, in its own process; ``log`` once stopped."""

    def __init__(self, directory: Path):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHOBOS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.commands.serve", "--store", f"chdb://{directory}", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = ""

    def __enter__(self) -> "Served":
        try:
            self.ready = wait_ready(self.port, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.log, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.log, _ = self.proc.communicate()


def test_truncated_part_is_reported(tmp_path):
    made = make_store(tmp_path / "db")
    name, path = made["parts"][1]
    data = Path(path) / "data.bin"
    os.truncate(data, data.stat().st_size // 3)

    with Served(tmp_path / "db") as served:
        # Degraded but serving: 200 for probes, 503 only when asked to be strict.
        assert served.ready["status"] == "degraded"
        status, body = get(served.port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "degraded"
        (reason,) = ready["reasons"]
        assert f"connections: part broken-on-start_{name} was detached by ClickHouse (broken-on-start)" in reason
        assert "300 rows no longer visible" in reason and "README" in ready["recovery"]
        (part,) = ready["damage"]["broken_parts"]
        assert (part["table"], part["name"], part["rows"]) == ("connections", f"broken-on-start_{name}", 300)
        assert part["ts_min"] <= part["ts_max"] and "unexpected size" in part["cause"]
        status, body = get(served.port, "/readyz?strict=1")
        assert status == 503 and json.loads(body)["status"] == "degraded"

        status, text = get(served.port, "/metrics")
        assert status == 200
        assert "phobos_store_damaged 1" in text
        assert 'phobos_store_broken_parts{table="connections"} 1' in text
        assert 'phobos_store_broken_rows{table="connections"} 300' in text
        assert 'phobos_store_detached_parts{table="connections",reason="broken-on-start"} 1' in text

        # What the damage did: raw lost the part, the rollups still hold it.
        assert sql(served.port, "SELECT count() FROM phobos.connections") == [[600]]
        assert sql(served.port, "SELECT sum(connects) FROM phobos.edges_1m") == [[900]]
    assert f"ERROR phobos.store: store damage in chdb://{tmp_path / 'db'} database phobos: connections: " \
           f"part broken-on-start_{name}" in served.log
    assert "is degraded: see README 'Store damage'" in served.log


def test_damaged_deduplication_log_is_reported(tmp_path):
    made = make_store(tmp_path / "db")
    log_file = Path(made["table_path"]) / "deduplication_logs" / "deduplication_log_1.txt"
    lines = log_file.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    # Cut the file in the middle of its last record, as a crash or a full disk would.
    os.truncate(log_file, len(b"".join(lines)) - 20)

    with Served(tmp_path / "db") as served:
        status, body = get(served.port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "degraded"
        (damage,) = ready["damage"]["deduplication_logs"]
        assert damage == {"table": "connections", "file": str(log_file), "line": 3,
                          "problem": "the last record has no end of line (file cut short)", "records_lost": 1}
        assert ready["damage"]["broken_parts"] == []
        status, text = get(served.port, "/metrics")
        assert 'phobos_store_dedup_log_damaged{table="connections"} 1' in text
        assert 'phobos_store_dedup_records_ignored{table="connections"} 1' in text

        # Why it matters: ClickHouse forgot batch b2, so its replay doubles raw rows
        # while the rollups (their logs intact) drop it. b0 and b1 are still deduplicated.
        from factories import T0, connection
        from tracer.records import format_ts

        for b in range(3):
            batch = [connection(ts=format_ts(T0 + 60 * b + i % 60), pid=i) for i in range(300)]
            status, _ = post(served.port, "/api/v1/ingest", {"batch_id": f"b{b}", "connections": batch})
            assert status == 200
        assert sql(served.port, "SELECT count() FROM phobos.connections") == [[1200]]
        assert sql(served.port, "SELECT sum(connects) FROM phobos.edges_1m") == [[900]]
    assert f"connections: deduplication log {log_file} is damaged at line 3" in served.log


def test_clean_store_is_ready_and_says_so(tmp_path):
    make_store(tmp_path / "db")
    with Served(tmp_path / "db") as served:
        # ready, no damage reported (the resolution stage may report its back-fill beside it)
        assert served.ready["status"] == "ready" and "damage" not in served.ready
        status, text = get(served.port, "/metrics")
        assert "phobos_store_damaged 0" in text and "phobos_store_damage_check_ok 1" in text
        assert "phobos_store_broken_parts{" not in text
    assert "store damage" not in served.log


# -- in this process, on the shared test store ----------------------------------

GOOD = (b"1\t20261201_1_1_0\t20261201_175_138\n"
        b"1\t20261201_2_2_0\t20261201_999_167\n"
        b"2\t20261201_1_1_0\t20261201_175_138\n")


@pytest.mark.parametrize("data, expected", [
    (GOOD, None),
    (b"", None),
    (GOOD[:-5], (3, "the last record has no end of line (file cut short)", 1)),
    (GOOD.replace(b"1\t20261201_2", b"x\t20261201_2"), (2, "operation b'x' is not a number", 2)),
    (GOOD[:40] + b"1\t20261201_2_2_0\t20261201_9_9\n" + GOOD[40:], (2, "4 tab-separated fields instead of 3", 3)),
    (GOOD.replace(b"20261201_2_2_0", b"20261201_3_2_0"), (2, "'20261201_3_2_0' is not a part name", 2)),
    (b"1\tall_1_1_0\t\n", (1, "empty block id", 1)),
])
def test_deduplication_log_grammar(data, expected):
    assert check_dedup_log(data) == expected


def test_parts_detached_by_a_person_are_counted_not_damage(store):
    from api.app import create_app
    from api.ingest.batches import ingest_batch
    from factories import connection

    ingest_batch(store, "connections", [connection(pid=p) for p in range(5)], batch_id="x")
    (part,) = store.query(f"SELECT name FROM system.parts WHERE database = '{store.db}' "
                          "AND table = 'connections' AND active")[0]
    store.execute(f"ALTER TABLE {store.db}.connections DETACH PART '{part}'")
    report = check_store(store)
    assert [(p.table, p.reason, p.rows) for p in report.detached] == [("connections", "", 5)]
    assert report.dedup_logs_checked and not report.damaged and report.problems == []
    client = create_app({"STORE": store, "TESTING": True}).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready"}
    text = client.get("/metrics").get_data(as_text=True)
    assert 'phobos_store_detached_parts{table="connections",reason=""} 1' in text
    assert "phobos_store_damaged 0" in text
    store.execute(f"ALTER TABLE {store.db}.connections ATTACH PART '{part}'")
    assert check_store(store).detached == []


def test_report_shape():
    report = DamageReport(dedup_logs=[DedupLogDamage("t", "/x/deduplication_log_1.txt", 4, "bad", 2)])
    assert report.damaged and report.reasons() == [
        "t: deduplication log /x/deduplication_log_1.txt is damaged at line 4 (bad); ClickHouse ignored "
        "2 record(s) from there on, so replays of those batches are stored twice"]
    assert "broken-on-start" in DAMAGE_REASONS and "" not in DAMAGE_REASONS
