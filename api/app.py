"""The Flask application factory of the Phobos API.

``create_app(config=None)`` builds the app from defaults, the environment
(``PHOBOS_*``, see ``api/config.py``) and ``config``; the store is opened on
first use, so building an app never touches ClickHouse.

Serving: ``phobos serve --store URL --port 8080`` runs the development
server (threads, one process) for the embedded mode; in production use
gunicorn with one worker and threads - one process is required with chDB,
which opens a data directory from one process only, and is fine with a
ClickHouse server too::

    PHOBOS_STORE=clickhouse://phobos@ch:9000/phobos PHOBOS_TOKEN=... \\
        gunicorn -w 1 --threads 8 -b 0.0.0.0:8080 'api.app:create_app()'
"""

from __future__ import annotations

import gc
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping

from flask import Flask, g, request

from api.config import load_config
from api.errors import register_error_handlers
from api.routes import register_blueprints
from api.routes.health import record_request
from api.storage import Store
from api.views.cache import ResultCache

if TYPE_CHECKING:
    from api.resolution.stage import Resolver

__all__ = ["create_app", "start_resolution"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the API.

    Parameters
    ----------
    config : mapping, optional
        Overrides of ``api.config.DEFAULTS`` (``STORE`` may also be an open
        ``api.storage.Store``, which the app then uses and does not close)
        and Flask settings such as ``TESTING``.

    Returns
    -------
    flask.Flask
    """
    overrides = dict(config or {})
    store_obj = overrides.pop("STORE", None)
    if store_obj is not None and not isinstance(store_obj, str):
        overrides["STORE"] = None
    elif store_obj is not None:
        overrides["STORE"] = store_obj
    settings = load_config(overrides)
    app = Flask("phobos")
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    # Views return dicts in a stable order; sorting keys would cost time on big graphs.
    app.json.sort_keys = False
    app.extensions["phobos_store_lock"] = threading.Lock()
    app.extensions["phobos_cache"] = ResultCache(settings["CACHE_SECONDS"])
    if store_obj is not None and not isinstance(store_obj, str):
        app.extensions["phobos_store"] = store_obj
    register_error_handlers(app)
    register_blueprints(app)

    @app.before_request
    def _start_timer() -> None:
        g.phobos_started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = getattr(g, "phobos_started", None)
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            record_request(endpoint, request.method, response.status_code, time.perf_counter() - started)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    if not app.config.get("TESTING"):
        # A serving process is long-lived: what it holds once built (modules,
        # the app, the store's bindings: some 60,000 objects) is moved out of
        # the collector's way, so a full collection in the middle of a request
        # takes ~0.5 ms instead of ~21 ms (500-service fleet, bench_api.py).
        gc.freeze()
    return app


def start_resolution(app: Flask, store: Store) -> Resolver:
    """Run the resolution stage for ``store`` in this process, in the background.

    The process that owns an embedded store is the only one that can write
    it, so ``phobos serve`` and ``phobos up`` run the stage themselves; with a
    ClickHouse server it takes a lease, so that a ``phobos resolve``
    elsewhere and this one never work at once. ``/metrics`` and ``/readyz``
    report its progress. Stop it with ``.stop()`` before closing the store.
    """
    from api.resolution.stage import Resolver

    resolver = Resolver.from_config(store, app.config)
    app.extensions["phobos_resolver"] = resolver
    return resolver.start()
