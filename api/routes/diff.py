"""``/api/v1/diff``: what changed between two times (new, vanished, changed edges)."""

from __future__ import annotations

from flask import Blueprint

from api.errors import ApiError
from api.routes.common import float_param, get_config, parse_time, view_context, view_params
from api.views.reports import graph_diff

__all__ = ["bp"]

bp = Blueprint("diff", __name__, url_prefix="/api/v1/diff")


@bp.get("")
def diff():
    cfg = get_config()
    p = view_params()  # ``at`` is the later time ("to" is accepted as its alias)
    to = parse_time("to", default=p.at)
    if to != p.at:
        p = p.ending_at(to)
    before = parse_time("from", default=to - 86400)
    if before >= to:
        raise ApiError(400, "parameter 'from' must be earlier than 'to'")
    min_change = float_param("min_change", cfg["DIFF_MIN_CHANGE"], 0.0, 1e6)
    min_volume = float_param("min_volume", cfg["DIFF_MIN_VOLUME"], 0.0, 1e12)
    return graph_diff(view_context(), p, before, min_change, min_volume)
