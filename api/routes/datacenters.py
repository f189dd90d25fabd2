"""``/api/v1/datacenters``: datacenters/zones and the traffic between them (global view)."""

from __future__ import annotations

from flask import Blueprint

from api.routes.build import datacenters_view
from api.routes.common import get_config, get_store, view_params

__all__ = ["bp"]

bp = Blueprint("datacenters", __name__, url_prefix="/api/v1/datacenters")


@bp.get("")
def list_datacenters():
    return datacenters_view(get_store(), get_config(), view_params())
