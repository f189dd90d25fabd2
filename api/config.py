"""API configuration: defaults, overridden by the environment, then by code.

Every setting has a ``PHOBOS_*`` environment variable (the Helm chart maps
its values onto them); ``create_app(config)`` takes a mapping with the same
keys for tests and for ``phobos serve``.

========================  ===========================  =====================
key                       environment                  default
========================  ===========================  =====================
STORE                     PHOBOS_STORE                 chdb://./data/phobos
TOKEN                     PHOBOS_TOKEN                 (unset: writes only on loopback)
READ_TOKEN                PHOBOS_READ_TOKEN            (unset: SQL reads only on loopback or with TOKEN)
BIND_HOST                 PHOBOS_BIND                  (unknown: treated as public)
MAX_BODY_BYTES            PHOBOS_MAX_BODY_BYTES        16 MiB
MAX_NODES                 PHOBOS_MAX_NODES             150
DEFAULT_WINDOW            PHOBOS_DEFAULT_WINDOW        300 (seconds)
MAX_WINDOW                PHOBOS_MAX_WINDOW            2678400 (31 days)
LISTENER_SLACK            PHOBOS_LISTENER_SLACK        600 (seconds)
RESOLVE_SETTLE            PHOBOS_RESOLVE_SETTLE        90 (seconds after a minute ends)
CACHE_SECONDS             PHOBOS_CACHE_SECONDS         300 (0: no result cache)
SQL_MAX_ROWS              PHOBOS_SQL_MAX_ROWS          10000
SQL_MAX_SECONDS           PHOBOS_SQL_MAX_SECONDS       10
SQL_MAX_BYTES             PHOBOS_SQL_MAX_BYTES         64 MiB
SQL_MAX_MEMORY            PHOBOS_SQL_MAX_MEMORY        2 GiB (per query)
SQL_CONCURRENCY           PHOBOS_SQL_CONCURRENCY       2 (queries at once; more get 429)
SQL_STORE                 PHOBOS_SQL_STORE             (unset: the store's URL; a read-only user)
ALERT_SERVICE_LABELS      PHOBOS_ALERT_SERVICE_LABELS  service,app,job
DIFF_MIN_CHANGE           PHOBOS_DIFF_MIN_CHANGE       0.5 (relative)
DIFF_MIN_VOLUME           PHOBOS_DIFF_MIN_VOLUME       0.01 (per second)
WARNING_RATIO             PHOBOS_WARNING_RATIO         0.01 (failed share of connects: yellow)
DANGER_RATIO              PHOBOS_DANGER_RATIO          0.05 (failed share of connects: red)
HEALTH_MIN_CONNECTS       PHOBOS_HEALTH_MIN_CONNECTS   10 (connects in a window before failures count)
========================  ===========================  =====================
"""

from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["DEFAULTS", "load_config"]

DEFAULTS: dict[str, Any] = {
    "STORE": None,
    "TOKEN": None,
    "READ_TOKEN": None,
    "BIND_HOST": None,
    "MAX_BODY_BYTES": 16 * 1024 * 1024,
    "MAX_NODES": 150,
    "DEFAULT_WINDOW": 300,
    "MAX_WINDOW": 31 * 86400,
    "LISTENER_SLACK": 600,
    "RESOLVE_SETTLE": 90,
    "CACHE_SECONDS": 300.0,
    "SQL_MAX_ROWS": 10_000,
    "SQL_MAX_SECONDS": 10.0,
    "SQL_MAX_BYTES": 64 * 1024 * 1024,
    "SQL_MAX_MEMORY": 2 * 1024**3,
    "SQL_CONCURRENCY": 2,
    "SQL_STORE": None,
    "ALERT_SERVICE_LABELS": ("service", "app", "job"),
    "DIFF_MIN_CHANGE": 0.5,
    "DIFF_MIN_VOLUME": 0.01,
    "WARNING_RATIO": 0.01,
    "DANGER_RATIO": 0.05,
    "HEALTH_MIN_CONNECTS": 10,
}

_ENV = {
    "STORE": "PHOBOS_STORE",
    "TOKEN": "PHOBOS_TOKEN",
    "READ_TOKEN": "PHOBOS_READ_TOKEN",
    "BIND_HOST": "PHOBOS_BIND",
    "MAX_BODY_BYTES": "PHOBOS_MAX_BODY_BYTES",
    "MAX_NODES": "PHOBOS_MAX_NODES",
    "DEFAULT_WINDOW": "PHOBOS_DEFAULT_WINDOW",
    "MAX_WINDOW": "PHOBOS_MAX_WINDOW",
    "LISTENER_SLACK": "PHOBOS_LISTENER_SLACK",
    "RESOLVE_SETTLE": "PHOBOS_RESOLVE_SETTLE",
    "CACHE_SECONDS": "PHOBOS_CACHE_SECONDS",
    "SQL_MAX_ROWS": "PHOBOS_SQL_MAX_ROWS",
    "SQL_MAX_SECONDS": "PHOBOS_SQL_MAX_SECONDS",
    "SQL_MAX_BYTES": "PHOBOS_SQL_MAX_BYTES",
    "SQL_MAX_MEMORY": "PHOBOS_SQL_MAX_MEMORY",
    "SQL_CONCURRENCY": "PHOBOS_SQL_CONCURRENCY",
    "SQL_STORE": "PHOBOS_SQL_STORE",
    "ALERT_SERVICE_LABELS": "PHOBOS_ALERT_SERVICE_LABELS",
    "DIFF_MIN_CHANGE": "PHOBOS_DIFF_MIN_CHANGE",
    "DIFF_MIN_VOLUME": "PHOBOS_DIFF_MIN_VOLUME",
    "WARNING_RATIO": "PHOBOS_WARNING_RATIO",
    "DANGER_RATIO": "PHOBOS_DANGER_RATIO",
    "HEALTH_MIN_CONNECTS": "PHOBOS_HEALTH_MIN_CONNECTS",
}


def _convert(key: str, value: Any) -> Any:
    default = DEFAULTS[key]
    if value is None or value == "":
        return default
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(value)
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


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
    for key, var in _ENV.items():
        raw = overrides[key] if key in overrides else environ.get(var)
        try:
            config[key] = _convert(key, raw)
        except (TypeError, ValueError):
            raise ValueError(f"{var} (config {key}) has a bad value {raw!r}") from None
    for key, value in overrides.items():
        if key not in config:
            config[key] = value  # Flask's own keys (TESTING ...) pass through
    if config["SQL_CONCURRENCY"] < 1:
        raise ValueError("PHOBOS_SQL_CONCURRENCY must be at least 1")
    if config["MAX_NODES"] < 3:
        raise ValueError("PHOBOS_MAX_NODES must be at least 3")
    if not 0 < config["WARNING_RATIO"] <= config["DANGER_RATIO"] <= 1:
        raise ValueError("PHOBOS_WARNING_RATIO and PHOBOS_DANGER_RATIO must satisfy 0 < warning <= danger <= 1")
    return config
