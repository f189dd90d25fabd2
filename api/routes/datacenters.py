"""``/api/v1/datacenters``: datacenters/zones and the traffic between them (global view)."""

from __future__ import annotations

from flask import Blueprint

from api.routes.common import view_context, view_params
from api.views.compose import datacenters_view

__all__ = ["bp"]

bp = Blueprint("datacenters", __name__, url_prefix="/api/v1/datacenters")


@bp.get("")
def list_datacenters():
    return datacenters_view(view_context(), view_params())
