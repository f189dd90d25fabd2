"""``/api/v1/edges``: the pairs behind one drawn edge (services behind an area edge, instances behind a service edge)."""

from __future__ import annotations

from flask import Blueprint, request

from api.errors import ApiError
from api.routes.common import view_context, view_params
from api.routes.problems import whole_param
from api.views.health import edge_pairs

__all__ = ["bp"]

bp = Blueprint("edges", __name__, url_prefix="/api/v1/edges")

_LEVELS = ("areas", "area")


@bp.get("")
def pairs():
    source, target = request.args.get("source") or "", request.args.get("target") or ""
    if not (0 < len(source) <= 256 and 0 < len(target) <= 256):
        raise ApiError(400, "parameters 'source' and 'target' must each hold 1 to 256 characters")
    level = request.args.get("level") or "area"
    if level not in _LEVELS:
        raise ApiError(400, f"parameter 'level'={level!r} is not one of {', '.join(_LEVELS)}")
    limit = whole_param("limit", 50, 1, 500)
    return edge_pairs(view_context(), view_params(), source, target, level, limit=limit)
