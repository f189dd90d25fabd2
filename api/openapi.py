"""The OpenAPI 3.0 description of the API, served at ``/api/openapi.json``.

Written as data next to the code it describes; ``tests/test_api_openapi.py``
checks that every route of the app is described and fuzzes the operations
from this document.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["openapi_spec"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: Mapping[str, Any] | None = None,
          media: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": dict(schema)}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad parameter or body", 401: "Missing or wrong bearer token",
            403: "Writes disabled (no token configured)", 404: "Unknown area or service",
            413: "Body too large", 429: "Too many analysts' queries at once; retry (Retry-After)",
            503: "Store unavailable"}
    return {str(c): _resp(text[c], _ERROR) for c in codes}


def _q(name: str, description: str, schema: Mapping[str, Any] | None = None,
       required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": dict(schema or {"type": "string", "maxLength": 256})}


_AT = _q("at", "Point in time: now (default), -2h, epoch seconds or ISO 8601 UTC.")
_WINDOW = _q("window", "Window before `at`: 300, 5m, 1h ... (default 5m, at most 31d).")
_METRIC = _q("metric", "Edge volume: open connections (default), new connections/s, failures/s.",
             {"type": "string", "enum": ["open", "connects", "failures"]})
_DC = _q("dc", "Only traffic with an end in this datacenter/zone.")
_VIEW_PARAMS = [_AT, _WINDOW, _METRIC, _DC]


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": 256}}


_VIZ = {"$ref": "#/components/schemas/Vizceral"}
_SECURED = [{"bearer": []}]


def openapi_spec(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    max_body = int((config or {}).get("MAX_BODY_BYTES", 16 * 1024 * 1024))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Phobos API",
            "version": "1",
            "description": (
                "Service dependency maps from kernel-traced TCP connections: area, service and "
                "instance graphs at any time (Vizceral JSON), impact, diff, search, ingest and "
                f"read-only SQL. Every error is JSON `{{code, message}}`. Bodies larger than "
                f"{max_body} bytes are refused with 413."
            ),
        },
        "paths": {
            "/api/v1/areas": {"get": {
                "summary": "Business areas and INTERNET with the traffic between them (Vizceral global).",
                "operationId": "areas", "parameters": _VIEW_PARAMS,
                "responses": {"200": _resp("Vizceral global view", _VIZ), **_errors(400)},
            }},
            "/api/v1/areas/{area}": {"get": {
                "summary": "One area: its services, their neighbours, alerting services (Vizceral region).",
                "operationId": "area", "parameters": [_path("area", "Area name"), *_VIEW_PARAMS],
                "responses": {"200": _resp("Vizceral region view", _VIZ), **_errors(400, 404)},
            }},
            "/api/v1/datacenters": {"get": {
                "summary": "Datacenters/zones and INTERNET with the traffic between them (Vizceral global).",
                "operationId": "datacenters", "parameters": _VIEW_PARAMS,
                "responses": {"200": _resp("Vizceral global view", _VIZ), **_errors(400)},
            }},
            "/api/v1/services/{service}": {"get": {
                "summary": "One service: its instances and their peers (Vizceral focused).",
                "operationId": "service", "parameters": [_path("service", "Service name"), *_VIEW_PARAMS],
                "responses": {"200": _resp("Vizceral focused view", _VIZ), **_errors(400, 404)},
            }},
            "/api/v1/services/{service}/summary": {"get": {
                "summary": "Side panel: instances, dependencies, first/last seen, alerts, catalog links.",
                "operationId": "serviceSummary",
                "parameters": [_path("service", "Service name"), *_VIEW_PARAMS],
                "responses": {"200": _resp("Summary", {"type": "object"}), **_errors(400, 404)},
            }},
            "/api/v1/services/{service}/impact": {"get": {
                "summary": "Upstream and downstream of a service, affected areas and business processes.",
                "operationId": "serviceImpact",
                "parameters": [_path("service", "Service name"), *_VIEW_PARAMS],
                "responses": {"200": _resp("Impact", {"$ref": "#/components/schemas/Impact"}),
                              **_errors(400, 404)},
            }},
            "/api/v1/diff": {"get": {
                "summary": "New, vanished and changed service edges between two times, and all of them "
                           "ranked by absolute change (`ranked`).",
                "operationId": "diff",
                "parameters": [
                    _q("from", "Earlier time (default: 24 h before `to`, or the first window wholly inside "
                               "the data when that is later; `meta.default_from` says so)."),
                    _q("to", "Later time (default now; `at` is an alias)."),
                    _AT, _WINDOW, _METRIC, _DC,
                    _q("min_change", "Relative change from which an edge counts as changed (default 0.5).",
                       {"type": "number", "minimum": 0}),
                    _q("min_volume", "Edges below this volume at both times are ignored (default 0.01).",
                       {"type": "number", "minimum": 0}),
                    _q("area", "Only the edges the area's view draws (one end in the area)."),
                    _q("service", "Only the edges the service's view draws (one end is the service)."),
                    _q("by", "`service` (default): service edges; `area`: area edges, as the areas view "
                             "draws them (not with `area` or `service`).",
                       {"type": "string", "enum": ["service", "area"]}),
                    _q("limit", "Most edges in `ranked` (1-5000, default 200).",
                       {"type": "integer", "minimum": 1, "maximum": 5000}),
                ],
                "responses": {"200": _resp("Diff", {"$ref": "#/components/schemas/Diff"}), **_errors(400)},
            }},
            "/api/v1/problems": {"get": {
                "summary": "The worst failing service pairs and services of the window (failed share of connects "
                           "from PHOBOS_WARNING_RATIO / PHOBOS_DANGER_RATIO), and alerting services.",
                "operationId": "problems",
                "parameters": [*_VIEW_PARAMS,
                               _q("limit", "Most pairs and most services listed (1-200, default 20).",
                                  {"type": "integer", "minimum": 1, "maximum": 200}),
                               _q("min_connects", "Connects a pair needs in the window to be classed "
                                                  "(default PHOBOS_HEALTH_MIN_CONNECTS).",
                                  {"type": "integer", "minimum": 1})],
                "responses": {"200": _resp("Problems", {"$ref": "#/components/schemas/Problems"}),
                              **_errors(400)},
            }},
            "/api/v1/edges": {"get": {
                "summary": "The pairs behind one drawn edge: service pairs behind an area edge (level=areas), "
                           "instance pairs behind a service edge (level=area).",
                "operationId": "edgePairs",
                "parameters": [
                    _q("source", "Client end of the drawn edge (area or service).",
                       {"type": "string", "minLength": 1, "maxLength": 256}, required=True),
                    _q("target", "Server end of the drawn edge (area or service).",
                       {"type": "string", "minLength": 1, "maxLength": 256}, required=True),
                    _q("level", "Level of the drawn edge: areas or area (default).",
                       {"type": "string", "enum": ["areas", "area"]}),
                    _q("limit", "Most pairs listed (1-500, default 50).",
                       {"type": "integer", "minimum": 1, "maximum": 500}),
                    *_VIEW_PARAMS,
                ],
                "responses": {"200": _resp("Pairs", {"type": "object", "required": ["pairs"],
                                                     "properties": {"pairs": {"type": "array",
                                                                              "items": {"type": "object"}}}}),
                              **_errors(400)},
            }},
            "/api/v1/edges/series": {"get": {
                "summary": "One drawn edge per minute over the hour before `at`: connects, failed connects and "
                           "open connections (the edge panel's sparkline).",
                "operationId": "edgeSeries",
                "parameters": [
                    _q("source", "Client end of the drawn edge (area, service, or instance at level=service).",
                       {"type": "string", "minLength": 1, "maxLength": 256}, required=True),
                    _q("target", "Server end of the drawn edge (area, service, or instance at level=service).",
                       {"type": "string", "minLength": 1, "maxLength": 256}, required=True),
                    _q("level", "Level of the drawn edge: areas, area (default) or service (an instance of "
                                "`service` and a peer).",
                       {"type": "string", "enum": ["areas", "area", "service"]}),
                    _q("service", "The open service, required with level=service.",
                       {"type": "string", "minLength": 1, "maxLength": 256}),
                    _q("minutes", "Minutes before `at` (10-360, default 60).",
                       {"type": "integer", "minimum": 10, "maximum": 360}),
                    *_VIEW_PARAMS,
                ],
                "responses": {"200": _resp("Per-minute series", {
                    "type": "object", "required": ["points", "totals"],
                    "properties": {"points": {"type": "array", "items": {
                                       "type": "object", "required": ["t", "connects", "failures", "open"]}},
                                   "totals": {"type": "object"}}}),
                              **_errors(400)},
            }},
            "/api/v1/search": {"get": {
                "summary": "Areas, services, instances and IPs containing a text.",
                "operationId": "search",
                "parameters": [
                    _q("q", "Text to look for (1-200 characters).",
                       {"type": "string", "minLength": 1, "maxLength": 200}, required=True),
                    _q("limit", "Results per kind (1-100, default 20).",
                       {"type": "integer", "minimum": 1, "maximum": 100}),
                    _AT,
                ],
                "responses": {"200": _resp("Matches", {"type": "object"}), **_errors(400)},
            }},
            "/api/v1/timeline": {"get": {
                "summary": "Time range with data, activity per bucket and incidents (time slider).",
                "operationId": "timeline",
                "parameters": [
                    _q("from", "Start (default: start of data, at most 7 days back)."),
                    _q("to", "End (default: end of data)."),
                    _q("buckets", "Number of buckets (1-2000, default 96).",
                       {"type": "integer", "minimum": 1, "maximum": 2000}),
                ],
                "responses": {"200": _resp("Timeline", {"type": "object"}), **_errors(400)},
            }},
            "/api/v1/ingest": {"post": {
                "summary": "Record batch from the tracer's http sink; rejected records are reported per index.",
                "operationId": "ingest", "security": _SECURED,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {
                        "batch_id": {"type": "string", "minLength": 1, "maxLength": 256},
                        "connections": {"type": "array", "items": {"type": "object"}},
                        "listeners": {"type": "array", "items": {"type": "object"}},
                    },
                    "additionalProperties": False,
                }}}},
                "responses": {"200": _resp("Per-kind results", {"type": "object"}),
                              **_errors(400, 401, 403, 413, 503)},
            }},
            "/api/v1/alerts": {"post": {
                "summary": "Prometheus Alertmanager webhook receiver.",
                "operationId": "alerts", "security": _SECURED,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["alerts"],
                    "properties": {
                        "version": {"type": "string"},
                        "status": {"type": "string", "enum": ["firing", "resolved"]},
                        "alerts": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["firing", "resolved"]},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "annotations": {"type": "object",
                                                "additionalProperties": {"type": "string"}},
                                "startsAt": {"type": "string", "format": "date-time"},
                                "endsAt": {"type": "string", "format": "date-time"},
                                "fingerprint": {"type": "string"},
                            },
                        }},
                    },
                }}}},
                "responses": {"200": _resp("Stored", {"type": "object"}), **_errors(400, 401, 403, 413)},
            }},
            "/api/v2/spans": {"post": {
                "summary": "Zipkin v2 spans (JSON), kept a few hours; the resolution stage links them into calls between services.",
                "operationId": "zipkinSpans", "security": _SECURED,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "array", "items": {
                        "type": "object", "required": ["traceId", "id"],
                        "properties": {
                            "traceId": {"type": "string", "minLength": 1},
                            "id": {"type": "string", "minLength": 1},
                            "parentId": {"type": "string"},
                            "kind": {"type": "string",
                                     "enum": ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]},
                            "name": {"type": "string"},
                            "timestamp": {"type": "integer", "minimum": 0},
                            "duration": {"type": "integer", "minimum": 0},
                            "localEndpoint": {"type": "object",
                                              "properties": {"serviceName": {"type": "string"}}},
                            "remoteEndpoint": {"type": "object",
                                               "properties": {"serviceName": {"type": "string"}}},
                            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                }}}},
                "responses": {"202": _resp("Accepted", {"type": "object"}), **_errors(400, 401, 403, 413)},
            }},
            "/api/v1/sql": {"post": {
                "summary": "One read-only statement over Phobos' own tables (SELECT/WITH/EXPLAIN/DESCRIBE/"
                           "SHOW TABLES/SHOW CREATE TABLE/EXISTS), with time, memory and row limits.",
                "security": [{"bearer": []}, {}],
                "operationId": "sql",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["query"],
                    "properties": {
                        "query": {"type": "string", "minLength": 1},
                        "format": {"type": "string", "enum": ["json", "csv"]},
                    },
                }}}},
                "responses": {
                    "200": {"description": "Result", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "rows": {"type": "array", "items": {"type": "array"}},
                            "count": {"type": "integer"}}}},
                        "text/csv": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 403, 413, 429, 503),
                },
            }},
            "/healthz": {"get": {"summary": "Liveness.", "operationId": "healthz",
                                 "responses": {"200": _resp("Alive", {"type": "object"})}}},
            "/readyz": {"get": {"summary": "Readiness: the store answers and has the schema. 200 with status "
                                           "'degraded' (and the damage) when parts are broken or a "
                                           "deduplication log is damaged; 'resolution' while the "
                                           "resolution stage has a backlog.",
                                "operationId": "readyz",
                                "parameters": [_q("strict", "1: answer 503 instead of 200 when degraded",
                                                  {"type": "string", "enum": ["0", "1", "true", "false"]})],
                                "responses": {"200": _resp("Ready or degraded", {"type": "object"}),
                                              **_errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (ingest counters, requests).",
                                 "operationId": "metrics",
                                 "responses": {"200": _resp("Prometheus text", {"type": "string"},
                                                            "text/plain")}}},
            "/api/openapi.json": {"get": {"summary": "This document.", "operationId": "openapi",
                                          "responses": {"200": _resp("OpenAPI 3.0", {"type": "object"})}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"],
                          "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
                "Vizceral": {"type": "object", "required": ["renderer", "name", "nodes", "connections"],
                             "properties": {"renderer": {"type": "string",
                                                         "enum": ["global", "region", "focused"]},
                                            "name": {"type": "string"},
                                            "maxVolume": {"type": "number"},
                                            "nodes": {"type": "array", "items": {"type": "object"}},
                                            "connections": {"type": "array", "items": {"type": "object"}},
                                            "metadata": {"type": "object"}}},
                "Impact": {"type": "object", "required": ["service", "upstream", "downstream"],
                           "properties": {k: {"type": "array", "items": {"type": "object"}}
                                          for k in ("upstream", "downstream", "areas", "processes")}
                           | {"service": {"type": "string"}, "cycles": {"type": "array"}}},
                "Problems": {"type": "object", "required": ["edges", "services", "meta"],
                             "properties": {"edges": {"type": "array", "items": {"type": "object"}},
                                            "services": {"type": "array", "items": {"type": "object"}},
                                            "counts": {"type": "object"}, "meta": {"type": "object"}}},
                "Diff": {"type": "object", "required": ["new", "vanished", "changed", "ranked", "counts"],
                         "properties": {**{k: {"type": "array", "items": {"type": "object"}}
                                           for k in ("new", "vanished", "changed")},
                                        "ranked": {"type": "array", "items": {
                                            "type": "object", "description": "an edge of new, vanished or "
                                            "changed with its `kind` and `delta` (after - before), largest "
                                            "absolute change first"}},
                                        "counts": {"type": "object"}}},
            },
        },
    }
