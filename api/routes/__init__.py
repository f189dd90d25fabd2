"""HTTP resources of the API, one blueprint per resource.

``register_blueprints(app)`` mounts them all; ``api/openapi.py`` describes
them.  Shared request helpers (the store, query parameters, the write token)
live in ``api/routes/common.py``.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_blueprints"]


def _blueprints() -> list:
    from api.routes import (alerts, areas, datacenters, diff, edges, health, ingest, problems, search, series,
                            services, spans, sql, timeline, ui)

    return [areas.bp, datacenters.bp, services.bp, diff.bp, problems.bp, edges.bp, series.bp, search.bp,
            timeline.bp, ingest.bp, alerts.bp, spans.bp, sql.bp, health.bp, ui.bp]


def register_blueprints(app: Flask) -> None:
    """Mount every resource's blueprint on ``app``."""
    for bp in _blueprints():
        app.register_blueprint(bp)
