"""``/api/v1/services/<s>``: one service's instances (focused view), summary and impact."""

from __future__ import annotations

from flask import Blueprint

from api.routes.build import service_impact, service_summary, service_view
from api.routes.common import get_config, get_store, view_params

__all__ = ["bp"]

bp = Blueprint("services", __name__, url_prefix="/api/v1/services")


@bp.get("/<path:service>/summary")
def summary(service: str):
    return service_summary(get_store(), get_config(), view_params(), service)


@bp.get("/<path:service>/impact")
def impact(service: str):
    return service_impact(get_store(), get_config(), view_params(), service)


@bp.get("/<path:service>")
def detail(service: str):
    return service_view(get_store(), get_config(), view_params(), service)
