"""``/api/v1/diff``: what changed between two times (new, vanished, changed edges)."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from api.errors import ApiError
from api.routes.common import float_param, get_config, get_store, parse_time, view_context, view_params
from api.views import reads
from api.views.reports import graph_diff

__all__ = ["bp"]

bp = Blueprint("diff", __name__, url_prefix="/api/v1/diff")


def default_from(to: int, window: int) -> int:
    """24 h before ``to``, moved to where the data starts when that is later.

    A comparison time before the first record makes every edge "new"; the
    earliest window that is wholly inside the data says more.
    """
    before = to - 86400
    store = get_store()
    span = current_app.extensions["phobos_cache"].get(("data_range", store.db), lambda: reads.data_range(store))
    if span and before - window < span[0]:
        before = min(span[0] + window, to - 60)
    return before


@bp.get("")
def diff():
    cfg = get_config()
    p = view_params()  # ``at`` is the later time ("to" is accepted as its alias)
    to = parse_time("to", default=p.at)
    if to != p.at:
        p = p.ending_at(to)
    given = bool((request.args.get("from") or "").strip())
    before = parse_time("from") if given else default_from(to, p.window)
    if before >= to:
        raise ApiError(400, "parameter 'from' must be earlier than 'to'")
    min_change = float_param("min_change", cfg["DIFF_MIN_CHANGE"], 0.0, 1e6)
    min_volume = float_param("min_volume", cfg["DIFF_MIN_VOLUME"], 0.0, 1e12)
    by = request.args.get("by") or "service"
    if by not in ("service", "area"):
        raise ApiError(400, "parameter 'by' must be service or area")
    area = request.args.get("area") or None
    service = request.args.get("service") or None
    if by == "area" and (area or service):
        raise ApiError(400, "parameter 'by=area' compares the whole fleet's areas: give no 'area' or 'service'")
    limit = int(float_param("limit", 200, 1, 5000))
    return graph_diff(view_context(), p, before, min_change, min_volume, area=area, service=service, by=by,
                      limit=limit, default_from=not given)
