"""Settings read from the environment: one table of name, variable, type, default and help.

What it is: every ``PHOBOS_*`` variable a Phobos process reads is a row
(``Setting``) of one table; flags take their defaults from it and the API's
config (``api/config.py``) is derived from it, so a variable, its type and its
default are written once.  This module holds the tracer's rows
(``TRACER_SETTINGS``); ``api.config.SETTINGS`` extends them with the API's
and the commands' (the tracer never imports ``api``).  The one family that is
not a row: ``PHOBOS_KAFKA_*`` variables the table does not name are
librdkafka properties (``PHOBOS_KAFKA_SASL_PASSWORD`` -> ``sasl.password``),
passed through by ``librdkafka_properties``.

Rules: an unset or empty variable means the default; a value that does not
convert is an error that names the variable (never a silent default).  Two
rows may share a variable when two commands give it different defaults
(``phobos up`` simulates a larger fleet than ``phobos simulate``); they then
share its type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

__all__ = ["Setting", "SettingError", "Settings", "TRACER_SETTINGS", "librdkafka_properties",
           "LIBRDKAFKA_PREFIX"]

#: Variables with this prefix that are not rows of the table are librdkafka properties.
LIBRDKAFKA_PREFIX = "PHOBOS_KAFKA_"
_TRUE = ("1", "true", "yes")


class SettingError(ValueError):
    """A variable whose value does not convert to its setting's type."""


@dataclass(frozen=True)
class Setting:
    """One row: ``name`` (the key in code), ``env`` (the variable), ``type``
    (``str``, ``int``, ``float``, ``bool`` or ``tuple`` - a comma-separated
    list), ``default`` (``None``: unset) and ``help``."""

    name: str
    env: str
    type: type
    default: Any
    help: str

    def convert(self, value: Any) -> Any:
        """``value`` (text from the environment, or a value given in code) as this setting's type."""
        if value is None or value == "":
            return self.default
        if self.type is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(value)
        if self.type is bool:
            return str(value).lower() in _TRUE
        return self.type(value)

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The value in ``environ`` (default ``os.environ``), or the default when unset or empty.

        Raises
        ------
        SettingError
            When the value does not convert, naming the variable.
        """
        raw = (os.environ if environ is None else environ).get(self.env)
        try:
            return self.convert(raw)
        except (TypeError, ValueError):
            raise SettingError(f"environment variable {self.env}={raw!r} is not a valid "
                               f"{self.type.__name__}") from None


class Settings(Mapping[str, Setting]):
    """Rows by name; built from groups of rows, later groups extending earlier ones.

    A name appears once (the same row may be listed again, in another
    group); rows that share a variable share its type.
    """

    def __init__(self, *groups: Iterable[Setting]) -> None:
        self._rows: dict[str, Setting] = {}
        types: dict[str, type] = {}
        for row in (r for group in groups for r in group):
            if self._rows.get(row.name, row) != row:
                raise ValueError(f"setting {row.name} is defined twice, differently")
            if types.setdefault(row.env, row.type) is not row.type:
                raise ValueError(f"{row.env} has two types: {types[row.env].__name__} and {row.type.__name__}")
            self._rows[row.name] = row

    def __getitem__(self, name: str) -> Setting:
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def value(self, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """The setting ``name`` from the environment (``SettingError`` when it does not convert)."""
        return self._rows[name].read(environ)

    def default(self, name: str, prog: str) -> Any:
        """A flag's default: the setting ``name``; a bad value exits with a message that starts with ``prog``."""
        try:
            return self.value(name)
        except SettingError as err:
            raise SystemExit(f"{prog}: {err}") from None

    def variables(self) -> set[str]:
        return {row.env for row in self._rows.values()}


TRACER_SETTINGS = Settings([
    Setting("MODE", "PHOBOS_MODE", str, "auto", "hooks: auto, tracepoint, kprobe or fentry"),
    Setting("INTERVAL", "PHOBOS_INTERVAL", float, 10.0, "seconds between drains of the kernel counters"),
    Setting("SINK", "PHOBOS_SINK", str, "stdout", "stdout | http://HOST:PORT | kafka://BROKERS/TOPIC"),
    Setting("CATALOG", "PHOBOS_CATALOG", str, None, "catalog file whose rules name services"),
    Setting("DC", "PHOBOS_DC", str, None, "datacenter/zone label of records (unset: PHOBOS_NODE_ZONE)"),
    Setting("NODE_ZONE", "PHOBOS_NODE_ZONE", str, "", "the node's zone, the default of PHOBOS_DC (the Helm chart "
            "sets it from the node's topology label)"),
    Setting("HOST", "PHOBOS_HOST", str, None, "host name in records (unset: the host name)"),
    Setting("METRICS_PORT", "PHOBOS_METRICS_PORT", int, 9435, "port of the tracer's /metrics and /healthz, 0 = off"),
    Setting("METRICS_ADDR", "PHOBOS_METRICS_ADDR", str, "127.0.0.1", "address of the tracer's /metrics"),
    Setting("MAX_QUEUE", "PHOBOS_MAX_QUEUE", int, 100_000,
            "records a network sink keeps while its target is down"),
    Setting("MAX_EDGES", "PHOBOS_MAX_EDGES", int, 16384, "edges the kernel counts at once"),
    Setting("MAX_SOCKS", "PHOBOS_MAX_SOCKS", int, 65536, "kernel socket table size"),
    Setting("DURATION", "PHOBOS_DURATION", float, 0.0, "stop tracing after this many seconds, 0 = run on"),
    Setting("LOG_LEVEL", "PHOBOS_LOG_LEVEL", str, "info", "stderr log level of the tracer"),
    Setting("NAT", "PHOBOS_NAT", bool, True, "follow destination NAT (ClusterIP, NodePort, published ports) "
            "through connection tracking"),
    Setting("NAT_NETNS", "PHOBOS_NAT_NETNS", str, None, "network namespace whose connection tracking is read "
            "(a name under /run/netns or a path such as /proc/1/ns/net; unset: the tracer's own)"),
    Setting("NAT_MAX_ENTRIES", "PHOBOS_NAT_MAX_ENTRIES", int, 100_000, "conntrack entries parsed per drain at most"),
    Setting("OPEN_BYTES", "PHOBOS_OPEN_BYTES", bool, True, "report the bytes and retransmits of connections "
            "still open at each drain (socket diagnostics), not only at their close"),
    Setting("TOKEN", "PHOBOS_TOKEN", str, None,
            "the API's write token: required by its write endpoints, sent by the tracer's http sink "
            "(unset: writes only on loopback)"),
    Setting("SPOOL_DIR", "PHOBOS_SPOOL_DIR", str, "/var/lib/phobos/spool",
            "where the Kafka sink keeps records while the brokers are down"),
    Setting("MODULES_DIR", "PHOBOS_MODULES_DIR", str, "/lib/modules", "where kernel headers are looked for"),
    Setting("TRACEFS", "PHOBOS_TRACEFS", str, None, "tracefs mount (unset: the usual places)"),
    Setting("BTF", "PHOBOS_BTF", str, "/sys/kernel/btf/vmlinux", "the kernel's BTF, for struct offsets"),
])


def librdkafka_properties(settings: Settings = TRACER_SETTINGS,
                          environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka properties from ``PHOBOS_KAFKA_*`` variables that are not rows of ``settings``.

    Examples
    --------
    >>> librdkafka_properties(environ={"PHOBOS_KAFKA_SASL_PASSWORD": "s", "PHOBOS_KAFKA_X": "", "PHOBOS_MODE": "a"})
    {'sasl.password': 's'}
    """
    named = settings.variables()
    return {name[len(LIBRDKAFKA_PREFIX):].lower().replace("_", "."): value
            for name, value in (os.environ if environ is None else environ).items()
            if name.startswith(LIBRDKAFKA_PREFIX) and value and name not in named}
