"""``/api/v1/edges/series``: a drawn edge per minute, on the hand-built fixture (tests/fixtures.py) in chDB.

The fixture's records are one per minute ``T0+60 .. T0+540``; what each
carries is known, so every point of a series is checked against what was
ingested - first with every minute resolved on the spot (no stage has
run), then from the resolution stage's tables, which must give the same.
"""

from __future__ import annotations

import pytest

import fixtures as fx
from api.app import create_app
from api.resolution.stage import Resolver
from factories import T0
from tracer.records import format_ts

VIEW = f"at={fx.AT}&window={fx.WINDOW}"
MINUTES = [T0 + 60 * i for i in range(1, 10)]


@pytest.fixture(scope="module")
def fixture_store(chdb_dir):
    from api.storage import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_series_fx", role="pytest")
    store.migrate()
    fx.build(store)
    yield store
    store.close()


def get(client, url, status=200):
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True)[:500])
    return response.get_json()


def series(client, source, target, level, **extra):
    q = "&".join(f"{k}={v}" for k, v in extra.items())
    return get(client, f"/api/v1/edges/series?source={source}&target={target}&level={level}&{VIEW}&{q}")


def by_minute(out, key="connects"):
    """The non-zero points, by the minute's start."""
    return {p["t"]: p[key] for p in out["points"] if p[key]}


def minutes(values):
    return {format_ts(t): v for t, v in values.items()}


#: What the fixture ingested, per minute: (source, target, level, service) -> {minute: (connects, failures)}.
EXPECTED = {
    # web's 10 connects a minute to api, one failed; api's inbound copy is not counted again
    ("web", "api", "area", None): {t: (10, 1) for t in MINUTES},
    # INTERNET clients are only seen at web (inbound, 5 accepts a minute)
    ("INTERNET", "web", "area", None): {t: (5, 0) for t in MINUTES},
    # api -> ledger and api -> db (a catalog range): one each a minute
    ("shop", "pay", "areas", None): {t: (2, 0) for t in MINUTES},
    # ledger -> api only after the deploy (i = 6..9)
    ("pay", "shop", "areas", None): {t: (1, 0) for t in MINUTES[5:]},
    # web's connects split by api's instance: h-api1 until the deploy, h-api2 after it
    ("web", "h-api1", "service", "api"): {t: (10, 1) for t in MINUTES[:5]},
    ("web", "h-api2", "service", "api"): {t: (10, 1) for t in MINUTES[5:]},
    # the untraced db seen from api's instances, named by its catalog range
    ("h-api2", "db", "service", "api"): {t: (1, 0) for t in MINUTES[5:]},
}


def check_expected(client):
    for (source, target, level, service), want in EXPECTED.items():
        extra = {"service": service} if service else {}
        out = series(client, source, target, level, **extra)
        assert len(out["points"]) == 60 and out["step"] == 60
        assert out["points"][-1]["t"] == format_ts(fx.AT - 60) and out["to"] == format_ts(fx.AT)
        assert by_minute(out) == minutes({t: c for t, (c, _) in want.items()}), (source, target, level)
        assert by_minute(out, "failures") == minutes({t: f for t, (_, f) in want.items() if f}), (source, target)
        assert out["totals"] == {"connects": sum(c for c, _ in want.values()),
                                 "failures": sum(f for _, f in want.values())}


def test_points_are_what_was_ingested_before_and_after_the_stage(fixture_store):
    client = create_app({"STORE": fixture_store, "TESTING": True, "CACHE_SECONDS": 0}).test_client()
    check_expected(client)  # every minute resolved on the spot
    stage = Resolver(fixture_store, now=lambda: T0 + 6 * 3600)
    stage.run_once(budget_s=120)
    assert stage.pending() == []
    check_expected(client)  # every minute from the stage's tables


def test_open_connections_per_minute_and_the_map_agree(fixture_store):
    client = create_app({"STORE": fixture_store, "TESTING": True}).test_client()
    out = series(client, "web", "api", "area")
    # web keeps 2 connections open to api all the time (one record a minute of interval 60)
    assert by_minute(out, "open") == minutes({t: 2.0 for t in MINUTES})
    # Summed over the map's window the series is the edge the map draws.
    edge = next(c for c in get(client, f"/api/v1/areas/shop?{VIEW}")["connections"]
                if (c["source"], c["target"]) == ("web", "api"))
    assert (out["totals"]["connects"], out["totals"]["failures"]) == (edge["metadata"]["connects"],
                                                                     edge["metadata"]["failures"])
    area_edge = next(c for c in get(client, f"/api/v1/areas?{VIEW}")["connections"]
                     if (c["source"], c["target"]) == ("shop", "pay"))
    assert series(client, "shop", "pay", "areas")["totals"]["connects"] == area_edge["metadata"]["connects"]


def test_the_series_ends_with_the_time_shown(fixture_store):
    client = create_app({"STORE": fixture_store, "TESTING": True}).test_client()
    at = T0 + 300
    out = get(client, f"/api/v1/edges/series?source=web&target=api&at={at}&window=120&minutes=30")
    assert len(out["points"]) == 30 and out["points"][-1]["t"] == format_ts(at - 60)
    assert by_minute(out) == minutes({t: 10 for t in MINUTES[:4]})  # nothing after the time shown
    assert out["at"] == format_ts(at)


def test_bad_parameters_are_400(fixture_store):
    client = create_app({"STORE": fixture_store, "TESTING": True}).test_client()
    get(client, "/api/v1/edges/series?target=api", 400)
    get(client, "/api/v1/edges/series?source=web&target=api&level=instances", 400)
    get(client, "/api/v1/edges/series?source=web&target=h-api1&level=service", 400)  # which service?
    get(client, "/api/v1/edges/series?source=web&target=api&level=area&service=api", 400)
    get(client, "/api/v1/edges/series?source=web&target=api&minutes=5", 400)
    # An edge that does not exist has a series of zeros, not an error: it may start later.
    out = get(client, f"/api/v1/edges/series?source=nobody&target=api&{VIEW}")
    assert out["totals"] == {"connects": 0, "failures": 0} and len(out["points"]) == 60
