"""``/api/v1/search``: areas, services, instances and IPs matching a text."""

from __future__ import annotations

from flask import Blueprint, request

from api.errors import ApiError
from api.routes.common import get_store, parse_time
from api.views import reads

__all__ = ["bp"]

bp = Blueprint("search", __name__, url_prefix="/api/v1/search")


@bp.get("")
def search():
    text = (request.args.get("q") or "").strip()
    if not text or len(text) > 200:
        raise ApiError(400, "parameter 'q' must hold 1 to 200 characters")
    limit_text = request.args.get("limit") or "20"
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise ApiError(400, "parameter 'limit' must be a whole number from 1 to 100")
    at = parse_time("at")
    return {"q": text, **reads.search(get_store(), text, limit=int(limit_text), since=at)}
