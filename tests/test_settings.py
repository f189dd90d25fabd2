"""One table of settings (``tracer/settings.py``, extended by ``api/config.py``), read by every command.

- The table converts and refuses the way ``load_config`` always has, and
  the app's ``DEFAULTS`` are read off it.
- Every command's flags take their defaults from it (a variable set in the
  environment reaches the flag).
- Nothing else reads the environment: ``os.environ``/``getenv`` appear in
  ``api/`` and ``tracer/`` only in the two table modules, and in ``tests/``
  only to pass an environment to a child process or for the harness's own
  knobs (listed below), so the table stays the one place.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from api.config import APP_SETTINGS, COMMAND_SETTINGS, DEFAULTS, SETTINGS, _ENV, load_config
from tracer.settings import TRACER_SETTINGS, Setting, Settings, SettingError, librdkafka_properties

ROOT = Path(__file__).resolve().parent.parent
TABLE_MODULES = {"tracer/settings.py", "api/config.py"}
#: (file, variable): knobs of the test harness itself, not of Phobos.
HARNESS = {
    ("tests/conftest.py", "CI"),
    ("tests/kafka.py", "PHOBOS_KAFKA_VERSION"), ("tests/kafka.py", "PHOBOS_KAFKA_CACHE"),
    ("tests/kafka.py", "XDG_CACHE_HOME"),
    ("tests/browser.py", "PHOBOS_ARTIFACTS"), ("tests/browser.py", "PHOBOS_CHROMIUM"),
    ("tests/test_helm.py", "PHOBOS_TOOLS"),
    ("tests/test_kafka_crash.py", "HOLD_AFTER"), ("tests/test_kafka_crash.py", "BATCH_RECORDS"),
}
_READ = re.compile(r"""(?:os\.environ(?:\.get\(|\[)|getenv\()\s*["']([A-Za-z0-9_]+)["']""")
_COPY = re.compile(r"dict\(os\.environ\b|\{\*\*os\.environ\b|os\.environ\.items\(\)")


def test_the_apps_defaults_are_read_off_the_table():
    assert DEFAULTS == {s.name: s.default for s in APP_SETTINGS}
    assert _ENV == {s.name: s.env for s in APP_SETTINGS}
    assert DEFAULTS["MAX_BODY_BYTES"] == 16 * 1024 * 1024 and DEFAULTS["ALERT_SERVICE_LABELS"] == ("service", "app", "job")
    assert SETTINGS["TOKEN"] is TRACER_SETTINGS["TOKEN"]  # the API's write token is the tracer's bearer token
    assert set(TRACER_SETTINGS) < set(SETTINGS)
    for row in (*APP_SETTINGS, *COMMAND_SETTINGS, *TRACER_SETTINGS.values()):
        assert row.env.startswith("PHOBOS_") and row.help, row
        assert row.default is None or row.type is bool or isinstance(row.default, row.type), row


def test_conversion_and_errors():
    labels = SETTINGS["ALERT_SERVICE_LABELS"]
    assert labels.read({"PHOBOS_ALERT_SERVICE_LABELS": " a, ,b "}) == ("a", "b")
    assert labels.read({"PHOBOS_ALERT_SERVICE_LABELS": ""}) == ("service", "app", "job")
    assert SETTINGS.value("NO_RESOLVE", {"PHOBOS_NO_RESOLVE": "Yes"}) is True
    assert SETTINGS.value("NO_RESOLVE", {"PHOBOS_NO_RESOLVE": "0"}) is False
    assert SETTINGS.value("INTERVAL", {"PHOBOS_INTERVAL": "2.5"}) == 2.5
    with pytest.raises(SettingError, match=re.escape("environment variable PHOBOS_PORT='http' is not a valid int")):
        SETTINGS.value("PORT", {"PHOBOS_PORT": "http"})
    with pytest.raises(ValueError, match=re.escape("PHOBOS_MAX_NODES (config MAX_NODES) has a bad value 'many'")):
        load_config(environ={"PHOBOS_MAX_NODES": "many"})


def test_a_table_refuses_two_rows_of_one_name_or_two_types_of_one_variable():
    a = Setting("A", "PHOBOS_A", int, 1, "a")
    assert len(Settings([a], [a])) == 1
    with pytest.raises(ValueError, match="defined twice"):
        Settings([a], [Setting("A", "PHOBOS_A", int, 2, "a")])
    with pytest.raises(ValueError, match="two types"):
        Settings([a], [Setting("B", "PHOBOS_A", str, "", "b")])
    assert len(Settings([a], [Setting("B", "PHOBOS_A", int, 2, "b")])) == 2


def test_librdkafka_properties_are_the_unnamed_kafka_variables():
    environ = {"PHOBOS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PHOBOS_KAFKA_BROKERS": "k:9092",
               "PHOBOS_KAFKA_GROUP": "g", "PHOBOS_STORE": "x"}
    assert librdkafka_properties(SETTINGS, environ) == {"security.protocol": "SASL_SSL"}
    assert librdkafka_properties(environ=environ) == {"security.protocol": "SASL_SSL", "brokers": "k:9092",
                                                      "group": "g"}


def _parser(configure) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser


def test_every_command_takes_its_defaults_from_the_table(monkeypatch):
    from api.commands import ingest, phobos, serve, up
    from api.simulation import simulate
    from tracer import agent

    for name, value in {"PHOBOS_STORE": "chdb:///tmp/x", "PHOBOS_PORT": "9001", "PHOBOS_BIND": "0.0.0.0",
                        "PHOBOS_INTERVAL": "3", "PHOBOS_SIM_AREAS": "9", "PHOBOS_SIM_LIVE": "1",
                        "PHOBOS_METRICS_PORT": "9999", "PHOBOS_KAFKA_BROKERS": "k:9092", "PHOBOS_TTL_DAYS": "7",
                        "PHOBOS_NODE_ZONE": "z1", "PHOBOS_MODE": "tracepoint"}.items():
        monkeypatch.setenv(name, value)
    args = _parser(serve.configure_parser).parse_args([])
    assert (args.store, args.port, args.host, args.kafka) == ("chdb:///tmp/x", 9001, "0.0.0.0", "k:9092")
    args = _parser(up.configure_parser).parse_args([])
    assert (args.port, args.interval, args.sim_areas, args.sim_services) == (9001, 3.0, 9, 60)
    args = _parser(simulate.configure_parser).parse_args([])
    assert (args.store, args.areas, args.services, args.live) == ("chdb:///tmp/x", 9, 40, True)
    args = _parser(ingest.configure_parser).parse_args([])
    assert (args.kafka, args.metrics_port, args.group, args.topic_prefix) == ("k:9092", 9999, "phobos-ingest", "phobos")
    args = _parser(agent.configure_parser).parse_args([])
    assert (args.interval, args.metrics_port, args.dc, args.mode) == (3.0, 9999, "z1", "tracepoint")
    args = phobos.build_parser("migrate").parse_args(["migrate"])
    assert (args.store, args.ttl_days, args.span_ttl_hours) == ("chdb:///tmp/x", 7, None)
    monkeypatch.setenv("PHOBOS_SIM_SERVICES", "lots")
    with pytest.raises(SystemExit, match="phobos up: environment variable PHOBOS_SIM_SERVICES='lots' is not a valid int"):
        _parser(up.configure_parser)


def test_unset_the_commands_keep_their_defaults(monkeypatch):
    from api.commands import ingest, serve, up
    from api.simulation import simulate
    from tracer import agent

    for name in SETTINGS.variables():
        monkeypatch.delenv(name, raising=False)
    args = _parser(serve.configure_parser).parse_args([])
    assert (args.store, args.port, args.host, args.kafka, args.no_resolve) == (None, 8080, "127.0.0.1", None, False)
    args = _parser(up.configure_parser).parse_args([])
    assert (args.data, args.sim_areas, args.sim_instances, args.sim_history, args.simulate) == (
        "./data/phobos", 8, 300, "-1h", False)
    args = _parser(simulate.configure_parser).parse_args([])
    assert (args.store, args.areas, args.instances, args.start, args.end) == ("chdb://./data/phobos", 6, 200, "-1h", "now")
    args = _parser(ingest.configure_parser).parse_args(["--kafka", "k:1"])
    assert (args.metrics_port, args.batch_records, args.batch_interval) == (0, 100_000, 1.0)
    args = _parser(agent.configure_parser).parse_args([])
    assert (args.interval, args.metrics_port, args.sink, args.dc, args.max_socks) == (10.0, 9435, "stdout", "", 65536)


def test_nothing_else_reads_the_environment():
    found = []
    for layer in ("api", "tracer", "tests"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in TABLE_MODULES or rel == "tests/test_settings.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not re.search(r"os\.environ|getenv", line):
                    continue
                if layer == "tests" and (_COPY.search(line) or
                                         all((rel, name) in HARNESS for name in _READ.findall(line)) and
                                         _READ.search(line)):
                    continue
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, ("the environment read outside the settings table (tracer/settings.py, api/config.py):\n"
                       + "\n".join(found))
