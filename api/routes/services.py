"""``/api/v1/services/<s>``: one service's instances (focused view), summary and impact."""

from __future__ import annotations

from flask import Blueprint

from api.routes.common import view_context, view_params
from api.views.compose import service_view
from api.views.reports import service_impact, service_summary

__all__ = ["bp"]

bp = Blueprint("services", __name__, url_prefix="/api/v1/services")


@bp.get("/<path:service>/summary")
def summary(service: str):
    return service_summary(view_context(), view_params(), service)


@bp.get("/<path:service>/impact")
def impact(service: str):
    return service_impact(view_context(), view_params(), service)


@bp.get("/<path:service>")
def detail(service: str):
    return service_view(view_context(), view_params(), service)
