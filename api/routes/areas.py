"""``/api/v1/areas``: the business areas (global view) and one area (region view)."""

from __future__ import annotations

from flask import Blueprint

from api.routes.build import area_view, areas_view
from api.routes.common import get_config, get_store, view_params

__all__ = ["bp"]

bp = Blueprint("areas", __name__, url_prefix="/api/v1/areas")


@bp.get("")
def list_areas():
    return areas_view(get_store(), get_config(), view_params())


@bp.get("/<path:area>")
def one_area(area: str):
    return area_view(get_store(), get_config(), view_params(), area)
