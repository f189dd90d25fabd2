"""``/api/v1/edges/series``: one drawn edge's connects, failures and open connections per minute over the hour before T."""

from __future__ import annotations

from flask import Blueprint, request

from api.errors import ApiError
from api.routes.common import view_context, view_params
from api.routes.problems import whole_param
from api.views.series import LEVELS, Edge, edge_series

__all__ = ["bp"]

bp = Blueprint("series", __name__, url_prefix="/api/v1/edges/series")


def _name(param: str, required: bool = True) -> str | None:
    text = request.args.get(param) or ""
    if not text and not required:
        return None
    if not 0 < len(text) <= 256:
        raise ApiError(400, f"parameter {param!r} must hold 1 to 256 characters")
    return text


@bp.get("")
def series():
    source, target = _name("source"), _name("target")
    level = request.args.get("level") or "area"
    if level not in LEVELS:
        raise ApiError(400, f"parameter 'level'={level!r} is not one of {', '.join(LEVELS)}")
    service = _name("service", required=level == "service")
    if level != "service" and service is not None:
        raise ApiError(400, "parameter 'service' names the open service of level=service only")
    minutes = whole_param("minutes", 60, 10, 360)
    return edge_series(view_context(), view_params(), Edge(source, target, level, service), minutes=minutes)
