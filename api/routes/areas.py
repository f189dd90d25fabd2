"""``/api/v1/areas``: the business areas (global view) and one area (region view)."""

from __future__ import annotations

from flask import Blueprint

from api.routes.common import view_context, view_params
from api.views.compose import area_view, areas_view

__all__ = ["bp"]

bp = Blueprint("areas", __name__, url_prefix="/api/v1/areas")


@bp.get("")
def list_areas():
    return areas_view(view_context(), view_params())


@bp.get("/<path:area>")
def one_area(area: str):
    return area_view(view_context(), view_params(), area)
