"""``/api/v1/diff``: what changed between two times (new, vanished, changed edges)."""

from __future__ import annotations

from flask import Blueprint

from api.errors import ApiError
from api.routes.build import graph_diff
from api.routes.common import float_param, get_config, get_store, parse_time, view_params

__all__ = ["bp"]

bp = Blueprint("diff", __name__, url_prefix="/api/v1/diff")


@bp.get("")
def diff():
    cfg = get_config()
    p = view_params()  # ``at`` is the later time ("to" is accepted as its alias)
    to = parse_time("to", default=p["at"])
    if to != p["at"]:
        from api.resolution.tcp import Window

        p = dict(p, at=to, win=Window.at(to, p["window"]))
    before = parse_time("from", default=to - 86400)
    if before >= to:
        raise ApiError(400, "parameter 'from' must be earlier than 'to'")
    min_change = float_param("min_change", cfg["DIFF_MIN_CHANGE"], 0.0, 1e6)
    min_volume = float_param("min_volume", cfg["DIFF_MIN_VOLUME"], 0.0, 1e12)
    return graph_diff(get_store(), cfg, p, before, min_change, min_volume)
