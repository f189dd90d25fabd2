"""Every view is valid Vizceral 4.9 JSON (a JSON Schema of the format) and escapes its notices."""

from __future__ import annotations

import pytest

import fixtures as fx
from api.app import create_app
from api.views import vizceral
from conftest import require

try:
    import jsonschema
except ImportError:  # pragma: no cover - the test extras install it
    jsonschema = None


@pytest.fixture(scope="module")
def client(chdb_dir):
    from api.storage import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_viz_fx", role="pytest")
    store.migrate()
    fx.build(store)
    yield create_app({"STORE": store, "TESTING": True, "MAX_NODES": 6}).test_client()
    store.close()


@pytest.fixture
def validator():
    require(jsonschema is not None, "jsonschema is not installed (pip install jsonschema)")
    jsonschema.Draft202012Validator.check_schema(vizceral.SCHEMA)
    return jsonschema.Draft202012Validator(vizceral.SCHEMA)


VIEWS = ["/api/v1/areas", "/api/v1/areas/shop", "/api/v1/areas/pay", "/api/v1/areas/INTERNET",
         "/api/v1/datacenters", "/api/v1/services/api", "/api/v1/services/web", "/api/v1/services/db"]


@pytest.mark.parametrize("url", VIEWS)
@pytest.mark.parametrize("metric", ["open", "connects", "failures"])
def test_views_match_the_schema(client, validator, url, metric):
    view = client.get(f"{url}?at={fx.AT}&window={fx.WINDOW}&metric={metric}").get_json()
    errors = sorted(validator.iter_errors(view), key=str)
    assert not errors, errors[0]
    assert view["renderer"] == {"areas": "global", "datacenters": "global"}.get(
        url.split("/")[3] if url.count("/") == 3 else "", "region" if "/areas/" in url else "focused")


def test_schema_rejects_broken_views(validator):
    good = vizceral.view("global", "edge", [vizceral.node("a"), vizceral.node("b")],
                   [vizceral.connection("a", "b", {"open": 1, "fail_rate": 0}, "open")])
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "renderer": "planet"})
    assert not validator.is_valid({**good, "maxVolume": 0})
    bad_metrics = dict(good["connections"][0], metrics={"normal": -1, "warning": 0, "danger": 0})
    assert not validator.is_valid({**good, "connections": [bad_metrics]})
    assert not validator.is_valid({**good, "notices": [{"title": "<b>raw</b>"}]})


def test_builder_refuses_duplicates_and_dangling():
    with pytest.raises(ValueError):
        vizceral.view("global", "x", [vizceral.node("a"), vizceral.node("a")], [])
    with pytest.raises(ValueError):
        vizceral.view("global", "x", [vizceral.node("a")], [vizceral.connection("a", "b", {}, "open")])


def test_notice_escapes():
    n = vizceral.notice('<img src=x onerror="alert(1)">', link="javascript:alert(1)")
    assert n["title"] == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" and "link" not in n
