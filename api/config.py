"""Settings: the table of every ``PHOBOS_*`` variable, and the API's configuration read off it.

``SETTINGS`` is the one table (``tracer.settings``: name, variable, type,
default, help): the tracer's rows, the app's (``APP_SETTINGS``, the keys of
``create_app(config)``) and the commands' flags (``COMMAND_SETTINGS``).
Every command takes its flags' defaults from it; the Helm chart maps its
values onto the same variables.  ``load_config`` gives the app's settings:
defaults, overridden by the environment, then by code (tests, ``phobos
serve``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from tracer.settings import TRACER_SETTINGS, Setting, Settings

__all__ = ["APP_SETTINGS", "COMMAND_SETTINGS", "DEFAULTS", "SETTINGS", "load_config"]

_S = Setting
_MIB = 1024 * 1024

#: The app's settings (``create_app``'s config keys); ``DEFAULTS`` and ``_ENV`` are read off them.
APP_SETTINGS = (
    _S("STORE", "PHOBOS_STORE", str, None, "store URL (unset: chdb://./data/phobos)"),
    TRACER_SETTINGS["TOKEN"],
    _S("READ_TOKEN", "PHOBOS_READ_TOKEN", str, None,
       "token of the analysts' SQL endpoint (unset: SQL reads only on loopback or with TOKEN)"),
    _S("BIND_HOST", "PHOBOS_BIND", str, None, "address the API is bound to (unknown: treated as public)"),
    _S("MAX_BODY_BYTES", "PHOBOS_MAX_BODY_BYTES", int, 16 * _MIB, "largest request body"),
    _S("MAX_NODES", "PHOBOS_MAX_NODES", int, 150, "nodes a view shows before it groups the long tail"),
    _S("DEFAULT_WINDOW", "PHOBOS_DEFAULT_WINDOW", int, 300, "seconds of a view's window when none is asked for"),
    _S("MAX_WINDOW", "PHOBOS_MAX_WINDOW", int, 31 * 86400, "longest window in seconds"),
    _S("LISTENER_SLACK", "PHOBOS_LISTENER_SLACK", int, 600,
       "seconds a listener is still taken to be there after it was last reported"),
    _S("RESOLVE_SETTLE", "PHOBOS_RESOLVE_SETTLE", int, 90, "seconds after a minute ends before it is resolved"),
    _S("CACHE_SECONDS", "PHOBOS_CACHE_SECONDS", float, 300.0, "seconds a view's result is cached (0: no cache)"),
    _S("SQL_MAX_ROWS", "PHOBOS_SQL_MAX_ROWS", int, 10_000, "rows an analysts' query may return"),
    _S("SQL_MAX_SECONDS", "PHOBOS_SQL_MAX_SECONDS", float, 10.0, "seconds an analysts' query may run"),
    _S("SQL_MAX_BYTES", "PHOBOS_SQL_MAX_BYTES", int, 64 * _MIB, "bytes an analysts' query may read"),
    _S("SQL_MAX_MEMORY", "PHOBOS_SQL_MAX_MEMORY", int, 2 * 1024**3, "memory an analysts' query may use"),
    _S("SQL_CONCURRENCY", "PHOBOS_SQL_CONCURRENCY", int, 2, "analysts' queries at once; more get 429"),
    _S("SQL_STORE", "PHOBOS_SQL_STORE", str, None, "store URL of a read-only user for analysts' SQL "
       "(unset: the store's URL)"),
    _S("ALERT_SERVICE_LABELS", "PHOBOS_ALERT_SERVICE_LABELS", tuple, ("service", "app", "job"),
       "alert labels that name the service, first present wins"),
    _S("DIFF_MIN_CHANGE", "PHOBOS_DIFF_MIN_CHANGE", float, 0.5, "relative change a diff reports"),
    _S("DIFF_MIN_VOLUME", "PHOBOS_DIFF_MIN_VOLUME", float, 0.01, "volume per second below which a diff ignores an edge"),
    _S("WARNING_RATIO", "PHOBOS_WARNING_RATIO", float, 0.01,
       "share of failed connects from which an edge, and what serves it, is drawn yellow"),
    _S("DANGER_RATIO", "PHOBOS_DANGER_RATIO", float, 0.05,
       "share of failed connects from which an edge, and what serves it, is drawn red"),
    _S("HEALTH_MIN_CONNECTS", "PHOBOS_HEALTH_MIN_CONNECTS", int, 3,
       "connects an edge needs in a view's window before its failures colour it or list it as a problem"),
    _S("WARNING_HANDSHAKE_P95_MS", "PHOBOS_WARNING_HANDSHAKE_P95_MS", float, 500.0,
       "95th percentile of an edge's handshake time (ms) from which it is drawn yellow; a lost SYN costs 1 s"),
    _S("WARNING_RETRANSMIT_RATIO", "PHOBOS_WARNING_RETRANSMIT_RATIO", float, 0.02,
       "retransmitted share of an edge's segments (estimated from its bytes) from which it is drawn yellow"),
)

#: The flags of the ``phobos`` commands beyond the app's settings and the tracer's.
COMMAND_SETTINGS = (
    _S("BIND", "PHOBOS_BIND", str, "127.0.0.1", "address phobos serve and phobos up bind"),
    _S("PORT", "PHOBOS_PORT", int, 8080, "port of phobos serve and phobos up"),
    _S("NO_RESOLVE", "PHOBOS_NO_RESOLVE", bool, False, "phobos serve runs no resolution stage"),
    _S("DATA", "PHOBOS_DATA", str, "./data/phobos", "phobos up's data directory"),
    _S("UP_SIMULATE", "PHOBOS_UP_SIMULATE", bool, False, "phobos up also writes a simulated live fleet"),
    _S("KAFKA_BROKERS", "PHOBOS_KAFKA_BROKERS", str, None, "Kafka bootstrap servers, host:9092[,host:9092]"),
    _S("TOPIC_PREFIX", "PHOBOS_TOPIC_PREFIX", str, "phobos", "record topics are PREFIX.connections and "
       "PREFIX.listeners"),
    _S("KAFKA_GROUP", "PHOBOS_KAFKA_GROUP", str, "phobos-ingest", "consumer group of phobos ingest"),
    _S("KAFKA_ENGINE_GROUP", "PHOBOS_KAFKA_ENGINE_GROUP", str, "phobos-clickhouse",
       "consumer group of ClickHouse's Kafka engine"),
    _S("BATCH_RECORDS", "PHOBOS_BATCH_RECORDS", int, 100_000, "records per partition batch of phobos ingest"),
    _S("BATCH_INTERVAL", "PHOBOS_BATCH_INTERVAL", float, 1.0,
       "seconds before phobos ingest inserts a partition's partial batch"),
    _S("INGEST_METRICS_PORT", "PHOBOS_METRICS_PORT", int, 0, "port of phobos ingest's /metrics, 0 = off"),
    _S("TTL_DAYS", "PHOBOS_TTL_DAYS", int, None, "retention of raw records in days (unset: keep; 30 when new)"),
    _S("SPAN_TTL_HOURS", "PHOBOS_SPAN_TTL_HOURS", int, None,
       "hours spans wait for the rest of their trace (unset: keep; 6 when new)"),
    _S("CLUSTER", "PHOBOS_CLUSTER", str, None, "ClickHouse cluster: Replicated*/Distributed tables, ON CLUSTER"),
    _S("SQL_PASSWORD", "PHOBOS_SQL_PASSWORD", str, "", "password of the analysts' read-only ClickHouse user"),
    _S("SIM_AREAS", "PHOBOS_SIM_AREAS", int, 6, "phobos simulate: business areas"),
    _S("SIM_SERVICES", "PHOBOS_SIM_SERVICES", int, 40, "phobos simulate: services"),
    _S("SIM_INSTANCES", "PHOBOS_SIM_INSTANCES", int, 200, "phobos simulate: instances"),
    _S("SIM_DCS", "PHOBOS_SIM_DCS", int, 2, "phobos simulate: datacenters"),
    _S("SIM_FROM", "PHOBOS_SIM_FROM", str, "-1h", "phobos simulate: start"),
    _S("SIM_TO", "PHOBOS_SIM_TO", str, "now", "phobos simulate: end"),
    _S("SIM_INTERVAL", "PHOBOS_SIM_INTERVAL", int, 60, "seconds per simulated record interval"),
    _S("SIM_SEED", "PHOBOS_SIM_SEED", int, 1, "phobos simulate: random seed"),
    _S("SIM_LIVE", "PHOBOS_SIM_LIVE", bool, False, "phobos simulate: keep writing in real time"),
    _S("SIM_CATALOG_OUT", "PHOBOS_SIM_CATALOG_OUT", str, None, "phobos simulate: also write the catalog here"),
    _S("UP_SIM_AREAS", "PHOBOS_SIM_AREAS", int, 8, "phobos up --simulate: business areas"),
    _S("UP_SIM_SERVICES", "PHOBOS_SIM_SERVICES", int, 60, "phobos up --simulate: services"),
    _S("UP_SIM_INSTANCES", "PHOBOS_SIM_INSTANCES", int, 300, "phobos up --simulate: instances"),
    _S("SIM_HISTORY", "PHOBOS_SIM_HISTORY", str, "-1h", "phobos up --simulate: history before going live"),
)

#: Every setting of every Phobos process: the tracer's, the app's, the commands'.
SETTINGS = Settings(TRACER_SETTINGS.values(), APP_SETTINGS, COMMAND_SETTINGS)

DEFAULTS: dict[str, Any] = {s.name: s.default for s in APP_SETTINGS}
_ENV = {s.name: s.env for s in APP_SETTINGS}


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from defaults, then ``environ`` (default ``os.environ``), then ``overrides``.

    Raises
    ------
    ValueError
        When a value does not convert (e.g. ``PHOBOS_MAX_NODES=many``),
        naming the variable.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    config: dict[str, Any] = {}
    for row in APP_SETTINGS:
        raw = overrides[row.name] if row.name in overrides else environ.get(row.env)
        try:
            config[row.name] = row.convert(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{row.env} (config {row.name}) has a bad value {raw!r}") from None
    for key, value in overrides.items():
        if key not in config:
            config[key] = value  # Flask's own keys (TESTING ...) pass through
    if config["SQL_CONCURRENCY"] < 1:
        raise ValueError("PHOBOS_SQL_CONCURRENCY must be at least 1")
    if config["MAX_NODES"] < 3:
        raise ValueError("PHOBOS_MAX_NODES must be at least 3")
    if not 0 < config["WARNING_RATIO"] <= config["DANGER_RATIO"] <= 1:
        raise ValueError("PHOBOS_WARNING_RATIO and PHOBOS_DANGER_RATIO must satisfy 0 < warning <= danger <= 1")
    if not config["WARNING_HANDSHAKE_P95_MS"] > 0:
        raise ValueError("PHOBOS_WARNING_HANDSHAKE_P95_MS must be above 0")
    if not 0 < config["WARNING_RETRANSMIT_RATIO"] <= 1:
        raise ValueError("PHOBOS_WARNING_RETRANSMIT_RATIO must satisfy 0 < ratio <= 1")
    return config
