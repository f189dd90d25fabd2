"""What every resource needs: the store, the views' context, parsed query parameters, the write token.

Parameters are parsed strictly - a bad ``at``, ``window`` or ``metric`` is a
400 that says what is accepted, never a silently different graph.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from functools import wraps
from typing import TYPE_CHECKING, Any, Callable

from flask import current_app, request

from api.errors import ApiError
from api.storage import Store
from api.views.context import ViewContext
from api.views.graph import METRICS
from api.views.params import ViewParams
from tracer import timestamps

if TYPE_CHECKING:
    from api.analysts.sql import ReaderPool

__all__ = [
    "get_store",
    "get_sql_readers",
    "get_config",
    "view_context",
    "parse_time",
    "parse_window",
    "parse_metric",
    "view_params",
    "float_param",
    "json_body",
    "require_token",
    "require_read_token",
    "is_loopback",
]

_MAX_PARAM = 256


def get_config() -> dict[str, Any]:
    """The running app's settings (``api.config``)."""
    return current_app.config


def get_store() -> Store:
    """The app's store, opened on first use (``PHOBOS_STORE`` or config ``STORE``)."""
    ext = current_app.extensions
    store = ext.get("phobos_store")
    if store is None:
        from api.storage import open_store

        with ext["phobos_store_lock"]:
            store = ext.get("phobos_store")
            if store is None:
                store = open_store(current_app.config.get("STORE"), role="phobos serve")
                ext["phobos_store"] = store
                from api.storage.damage import check_at_start

                check_at_start(store)  # damage is logged when the store opens, not at the first probe
    return store


def get_sql_readers() -> ReaderPool:
    """The app's pool of read-only connections for analysts' SQL (``api.analysts.sql``)."""
    ext = current_app.extensions
    pool = ext.get("phobos_sql_readers")
    if pool is None:
        from api.analysts.sql import ReaderPool, read_limits

        store = get_store()
        cfg = current_app.config
        limits = read_limits(cfg)
        with ext["phobos_store_lock"]:
            pool = ext.get("phobos_sql_readers")
            if pool is None:
                pool = ReaderPool(store, limits, size=cfg["SQL_CONCURRENCY"], url=cfg.get("SQL_STORE"))
                ext["phobos_sql_readers"] = pool
    return pool


def _arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is not None and len(value) > _MAX_PARAM:
        raise ApiError(400, f"parameter {name!r} is longer than {_MAX_PARAM} characters")
    return value


def parse_time(name: str, default: int | None = None, now: float | None = None) -> int:
    """A point in time from the query string, as epoch seconds.

    Accepted: ``now``, relative ``-2h`` / ``-30m`` / ``-1d``, epoch seconds,
    ISO 8601 (``2026-11-26T10:00:00Z``; without a zone it is UTC).
    """
    now = time.time() if now is None else now
    text = _arg(name)
    if text is None or text.strip() == "":
        return int(now if default is None else default)
    text = text.strip()
    value = timestamps.parse_time(text, now)
    if value is None or not (86400 <= value < 2**32 - 86400):
        raise ApiError(400, f"parameter {name!r}={text!r} is not a time: use now, -2h, epoch "
                            f"seconds or ISO 8601 such as 2026-11-26T10:00:00Z")
    return int(value)


def parse_window(name: str = "window") -> int:
    """A window length: ``300``, ``300s``, ``5m``, ``1h``, ``1d``; 1 minute to ``MAX_WINDOW``."""
    cfg = get_config()
    text = _arg(name)
    if text is None or text.strip() == "":
        return int(cfg["DEFAULT_WINDOW"])
    seconds = timestamps.parse_duration(text)
    if seconds is None or not (60 <= seconds <= cfg["MAX_WINDOW"]):
        raise ApiError(400, f"parameter {name!r}={text!r} is not a window from 1m to "
                            f"{cfg['MAX_WINDOW']}s: use e.g. 300, 5m, 1h")
    return int(seconds)


def parse_metric() -> str:
    """The edge volume to draw: ``open`` (default), ``connects`` or ``failures``."""
    text = _arg("metric")
    if text is None or text == "":
        return "open"
    if text not in METRICS:
        raise ApiError(400, f"parameter 'metric'={text!r} is not one of {', '.join(METRICS)}")
    return text


def view_params() -> ViewParams:
    """``at``, ``window``, ``metric``, ``dc`` of a graph view, checked."""
    at = parse_time("at")
    window = parse_window()
    metric = parse_metric()
    return ViewParams.of(at, window, metric, _arg("dc") or None)


def view_context() -> ViewContext:
    """What the views read through: the app's store and result cache, its view settings."""
    return ViewContext.from_config(get_store(), current_app.extensions["phobos_cache"], get_config())


def float_param(name: str, default: float, lo: float = 0.0, hi: float = 1e12) -> float:
    """A number from the query string within ``[lo, hi]`` (NaN refused)."""
    text = _arg(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (lo <= value <= hi):  # also refuses nan
        raise ApiError(400, f"parameter {name!r}={text!r} must be a number from {lo} to {hi}")
    return value


def json_body(kind: type = dict, records_at: int | None = None) -> Any:
    """The request's JSON body, which must be a ``kind`` (object or array).

    Bodies that are not UTF-8 JSON, or nest deeper than
    ``api.ingest.decode.MAX_JSON_DEPTH``, are a 400 saying so; a body over
    ``PHOBOS_MAX_BODY_BYTES`` is a 413, chunked or not. ``records_at``: see
    ``api.ingest.decode.decode_body`` (records too deep to decode stand in the
    result as ``Undecodable``).
    """
    from api.ingest.decode import decode_body

    data = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH when the length is declared
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit and len(data) >= limit:
        # A chunked body is cut at the limit rather than refused: refuse it here.
        raise ApiError(413, f"request body too large; at most {limit - 1} bytes are accepted in chunked form")
    try:
        value = decode_body(data, records_at=records_at)
    except ValueError as err:
        raise ApiError(400, f"{err} (Content-Type: application/json)") from None
    if not isinstance(value, kind):
        what = "a JSON object" if kind is dict else "a JSON array"
        raise ApiError(400, f"the request body must be {what} (Content-Type: application/json)")
    return value


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, brackets allowed) is this machine's loopback."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bearer_matches(*tokens: str | None) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given_b = given.strip().encode()
    return any(t and hmac.compare_digest(given_b, t.encode()) for t in tokens)


def require_read_token(view: Callable) -> Callable:
    """Guard a read endpoint that reaches the store's tables directly (SQL).

    With ``PHOBOS_READ_TOKEN`` or ``PHOBOS_TOKEN`` configured, one of them
    is required as a bearer token. Without either, only a server bound to
    loopback answers, and only requests from loopback.
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cfg = get_config()
        tokens = (cfg.get("READ_TOKEN"), cfg.get("TOKEN"))
        if any(tokens):
            if not _bearer_matches(*tokens):
                raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required "
                                    "(PHOBOS_READ_TOKEN or PHOBOS_TOKEN)")
        elif not (is_loopback(cfg.get("BIND_HOST")) and is_loopback(request.remote_addr)):
            raise ApiError(403, "SQL is disabled on a server reachable from other machines without a "
                                "token: set PHOBOS_READ_TOKEN (or PHOBOS_TOKEN), or bind to 127.0.0.1")
        return view(*args, **kwargs)

    return wrapper


def require_token(view: Callable) -> Callable:
    """Guard a write endpoint with the bearer token ``PHOBOS_TOKEN``.

    Without a configured token writes are refused, unless the server is
    bound to loopback and the request comes from it (the embedded mode on
    one machine, where anyone who can connect is already on the host).
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cfg = get_config()
        token = cfg.get("TOKEN")
        if token:
            if not _bearer_matches(token):
                raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required")
        elif not (is_loopback(cfg.get("BIND_HOST")) and is_loopback(request.remote_addr)):
            raise ApiError(403, "writes are disabled: set PHOBOS_TOKEN, or bind the server to "
                                "127.0.0.1 and write from the same machine")
        return view(*args, **kwargs)

    return wrapper
