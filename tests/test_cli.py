"""The phobos command end to end, in a subprocess like a user runs it."""

import json
import subprocess
import sys
import time

import pytest

from factories import connection, listener

# Every test runs the phobos command in a new process.
pytestmark = pytest.mark.slow

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def phobos(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "api.commands.phobos", *args], cwd=ROOT, input=stdin,
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def url(tmp_path):
    return f"chdb://{tmp_path / 'store'}"


def test_migrate_twice_then_read_only_sql(url):
    first = phobos("migrate", "--store", url)
    assert first.returncode == 0, first.stderr
    assert "applied 001_core.sql" in first.stdout
    again = phobos("migrate", "--store", url)
    assert again.returncode == 0 and "already up to date" in again.stdout
    out = phobos("sql", "--store", url, "--format", "csv", "SELECT version, name FROM phobos.schema_migrations ORDER BY version")
    from api.storage.migrations import schema_files

    files = schema_files()
    assert [name for _, name, _ in files][:5] == ["core", "dead_letter_dedup", "resolved", "spans", "presence"]
    assert out.stdout.splitlines() == ['"version","name"', *(f'{v},"{name}"' for v, name, _ in files)]
    for write in ("DROP TABLE phobos.alerts", "INSERT INTO phobos.alerts (fingerprint) VALUES ('x')",
                  "SELECT 1; DROP TABLE phobos.alerts", "SET readonly = 0"):
        refused = phobos("sql", "--store", url, write)
        assert refused.returncode == 2
        assert "readonly" in refused.stderr.lower() and "Traceback" not in refused.stderr
    assert "│      1 │" in phobos("sql", "--store", url, "EXISTS TABLE phobos.alerts").stdout


def test_load_json_lines_reports_bad_records(url):
    lines = [json.dumps(connection(pid=1)), "{not json", json.dumps(connection(open=-1)), json.dumps(listener())]
    out = phobos("load", "--store", url, "-", stdin="\n".join(lines) + "\n")
    assert out.returncode == 1
    assert "loaded 1 connection and 1 listener records, rejected 2" in out.stdout
    assert "-:2: not JSON" in out.stderr and "field 'open' must not be negative" in out.stderr
    summary = phobos("summary", "--store", url)
    assert summary.returncode == 0, summary.stderr
    assert "connections     1 records from 1 hosts, 1 services" in summary.stdout


def test_user_errors_are_one_line_not_a_traceback(url, tmp_path):
    bad = tmp_path / "catalog.yaml"
    bad.write_text("version: 1\nareas:\n  - name: x\n    titel: X\n")
    out = phobos("catalog", "check", str(bad))
    assert out.returncode == 2 and f"{bad}:4:5" in out.stderr and "Traceback" not in out.stderr
    out = phobos("summary", "--store", url)
    assert out.returncode == 2 and "run `phobos migrate" in out.stderr
    out = phobos("migrate", "--store", "mysql://nope")
    assert out.returncode == 2 and "unknown store scheme" in out.stderr
    out = phobos("catalog", "load", str(ROOT / "api" / "catalog" / "example.yaml"), "--store", url)
    assert out.returncode == 0 and "loaded as catalog version" in out.stdout, out.stderr


def test_demo_fills_a_store_and_summarises_it(url):
    # The simulated history is laid out from its start minute (events fall at
    # fractions of the run), so the two runs below must start in one minute
    # to be the same simulation; each takes about ten seconds.
    if time.time() % 60 > 30:
        time.sleep(60.5 - time.time() % 60)
    out = phobos("demo", "--store", url, "--hours", "1", "--areas", "3", "--services", "12", "--instances", "30")
    assert out.returncode == 0, out.stderr
    assert "applied 001_core.sql" in out.stdout
    assert "12 services, 30 instances, seed 1" in out.stdout
    assert "busiest clients (outbound, all time):" in out.stdout
    assert "catalog         v1:" in out.stdout
    # A second run over (nearly) the same hour adds only the minutes that
    # passed in between: every other batch is deduplicated.
    before = phobos("sql", "--store", url, "--format", "csv", "SELECT count() FROM phobos.connections").stdout
    again = phobos("demo", "--store", url, "--hours", "1", "--areas", "3", "--services", "12", "--instances", "30")
    assert again.returncode == 0, again.stderr
    after = phobos("sql", "--store", url, "--format", "csv", "SELECT count() FROM phobos.connections").stdout
    added = int(after.splitlines()[1]) - int(before.splitlines()[1])
    assert 0 <= added <= int(before.splitlines()[1]) // 20


def test_migrate_sets_how_long_spans_wait(url):
    assert phobos("migrate", "--store", url).returncode == 0
    changed = phobos("migrate", "--store", url, "--span-ttl-hours", "3")
    assert changed.returncode == 0 and "spans: TTL 6 -> 3 hours" in changed.stdout, changed.stderr
    refused = phobos("migrate", "--store", url, "--span-ttl-hours", "0")
    assert refused.returncode == 2 and "span_ttl_hours" in refused.stderr
