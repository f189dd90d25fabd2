"""``clickhouse://user:pass@host:9000/phobos``: a ClickHouse server through ``clickhouse-driver``.

The native protocol with columnar inserts; one client per thread (the
driver's clients are not thread-safe).  Query parameters in ClickHouse's
``{name:Type}`` syntax are turned into the driver's own (``driver_params``),
and values come back as the JSON-ready text chDB returns, so callers see
the same rows from either back end.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from api.storage.base import INSERT_SETTINGS, QUERY_SETTINGS, StoreBase, base_type, clean_error
from api.storage.interface import ReadLimits, Store, StoreError, StoreURL, parse_store_url

__all__ = ["ClickHouseStore", "driver_params", "render_rows"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^{}]+)\}")


class ClickHouseStore(StoreBase):
    """A ClickHouse server through clickhouse-driver (native protocol)."""

    def __init__(self, url: StoreURL, role: str = "phobos", settings: dict[str, Any] | None = None,
                 send_settings: bool = True):
        from clickhouse_driver import Client

        self.url = url
        self.db = url.database
        self._local = threading.local()
        self._client_args = dict(
            host=url.host, port=url.port, user=url.user, password=url.password,
            secure=url.secure, client_name=f"phobos-{role}",
            settings={"use_numpy": False, **((settings or {}) if send_settings else {})},
        )
        self._client_cls = Client
        self.read_only = bool(settings and settings.get("readonly"))
        if not self.read_only:
            self._client_args["settings"].update(QUERY_SETTINGS)
        if self.read_only:
            # Unqualified table names in analysts' queries mean Phobos' tables.
            self._client_args["database"] = url.database

    def open_reader(self, limits: ReadLimits, url: str | None = None) -> Store:
        parsed = parse_store_url(url) if url else self.url
        if parsed.scheme != "clickhouse":
            raise StoreError("the reader URL of a ClickHouse store must be clickhouse://...")
        if parsed.database != self.db:
            raise StoreError(f"the reader URL names database {parsed.database}, the store {self.db}")
        if url:
            # A user made for analysts has these limits and readonly = 1 in its
            # own profile (sql/server/analyst.sql); a readonly user may not
            # send settings, so none are sent.
            return ClickHouseStore(parsed, "phobos-sql", {"readonly": 1}, send_settings=False)
        return ClickHouseStore(parsed, "phobos-sql", {**limits.settings(), "readonly": 1})

    @property
    def client(self) -> Any:
        # clickhouse-driver clients are not thread-safe: one per thread.
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._client_cls(**self._client_args)
            self._local.client = client
        return client

    def _call(self, sql: str, params: dict[str, Any] | None, **kwargs: Any) -> Any:
        text, values = driver_params(sql, params)
        try:
            return self.client.execute(text, values, **kwargs)
        except Exception as err:
            raise StoreError(f"{self.url.redacted()}: {clean_error(err)}") from None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._call(sql, params)

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        rows, columns = self._call(sql, params, with_column_types=True)
        return [name for name, _ in columns], [tuple(_driver_value(v) for v in row) for row in rows]

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> str:
        # The native protocol returns values, not formatted text: render the
        # formats the CLI offers here.
        names, rows = self.query_columns(sql, params)
        return render_rows(names, rows, fmt)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        rows, columns = self._call(sql, params, with_column_types=True, columnar=True)
        return pa.table({name: pa.array([_driver_value(v) for v in col]) for (name, _), col in zip(columns, rows)})

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        if self.read_only:
            raise StoreError("this connection is read-only")
        if data.num_rows == 0:
            return 0
        types = self.column_types(table)
        columns = []
        for name in data.column_names:
            values = data.column(name).to_pylist()
            if base_type(types[name]).startswith("DateTime"):
                values = [datetime.fromtimestamp(v, tz=timezone.utc) if isinstance(v, (int, float)) else v for v in values]
            elif base_type(types[name]) == "IPv6":
                import ipaddress

                values = [str(ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(v)}")) if isinstance(v, int) else v for v in values]
            columns.append(values)
        settings: dict[str, Any] = dict(INSERT_SETTINGS)
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        cols = ", ".join(f"`{name}`" for name in data.column_names)
        try:
            self.client.execute(
                f"INSERT INTO {self.db}.{table} ({cols}) VALUES", columns, columnar=True, settings=settings
            )
        except Exception as err:
            raise StoreError(f"insert into {self.db}.{table} failed: {clean_error(err)}") from None
        return data.num_rows

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.disconnect()


def _driver_value(value: Any) -> Any:
    """The driver's Python objects as the JSON-ready values chDB returns."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if type(value).__name__ in ("IPv4Address", "IPv6Address"):
        return str(value)
    return value


def render_rows(names: list[str], rows: list[tuple], fmt: str) -> str:
    """Rows as CSV, JSONEachRow or a plain text table (for the CLI)."""
    import csv
    import io

    if fmt == "CSVWithNames":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "JSONEachRow":
        return "".join(json.dumps(dict(zip(names, row)), default=str) + "\n" for row in rows)
    cells = [names] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(names))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def driver_params(sql: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Turn ``{name:Type}`` parameters into clickhouse-driver's ``%(name)s``.

    The driver substitutes client-side with its own escaping; the CAST keeps
    the type the query asked for. Literal ``%`` is doubled for the driver.
    """
    if not params:
        return sql, {}
    text = sql.replace("%", "%%")

    def repl(match: re.Match) -> str:
        name, ch_type = match.group(1), match.group(2).strip()
        if name not in params:
            raise StoreError(f"query parameter {name!r} has no value")
        if ch_type in ("Identifier",):
            raise StoreError("identifier parameters are not supported")
        return f"CAST(%({name})s AS {ch_type})"

    return _PARAM.sub(repl, text), dict(params)
