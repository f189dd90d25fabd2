"""``/api/v1/problems``: the worst failing service pairs and services of a window (the page's problems list)."""

from __future__ import annotations

from flask import Blueprint, request

from api.errors import ApiError
from api.routes.common import view_context, view_params
from api.views.health import problems

__all__ = ["bp", "whole_param"]

bp = Blueprint("problems", __name__, url_prefix="/api/v1/problems")


def whole_param(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """A whole number from the query string within ``[lo, hi]``, or ``default`` when absent."""
    text = (request.args.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ApiError(400, f"parameter {name!r} must be a whole number from {lo} to {hi}")
    return int(text)


@bp.get("")
def list_problems():
    limit = whole_param("limit", 20, 1, 200)
    min_connects = whole_param("min_connects", None, 1, 10**9)
    return problems(view_context(), view_params(), limit=limit, min_connects=min_connects)
