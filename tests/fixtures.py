"""Test data: a small hand-built fleet whose exact graph is known, for the API, resolution and UI tests.

Ten one-minute intervals ``T0+60 .. T0+540`` (``i = 1..9``) of records,
ingested through ``ingest_batch`` like the tracer's http sink would.

Services (catalog): area ``shop`` = web, api, batch; area ``pay`` =
ledger, db (untraced, known by its range 10.9.0.0/24:5432); external
``stripe`` (203.0.113.0/26, area pay); business process ``checkout-flow``
= web + ledger.  ``redis`` is not in the catalog (area ``unassigned``).

What it exercises:

* **IP reuse across a deploy**: 10.0.0.2:8080 is ``api`` (host h-api1)
  until i=5; from i=6 the same address:port is ``ledger`` (h-led2) and api
  runs at 10.0.0.3 (h-api2).  ``web`` calls 10.0.0.2:8080 only before the
  deploy, ``api`` only after it: a resolution by address alone would
  invent web->ledger and api->api.
* **both ends**: web->api is reported by web (outbound) and by api
  (inbound); it must be counted once.
* **externals / catalog ranges / INTERNET**: ledger->stripe, api->db,
  web->192.0.2.50 (nothing knows it: INTERNET), INTERNET clients of web
  (inbound only, from 198.51.100.7).
* **wildcard listener**: web listens on ``::``:80; batch calls 10.0.0.1:80.
* **loopback**: web calls 127.0.0.1:6379, where its own host runs redis and
  another host runs something else.
* **cycle**: ledger (h-led) calls api after the deploy: api -> ledger -> api.
* **a change in time**: web->INTERNET stops after i=5, api->db triples from
  i=6 (the diff between i=1..4 and i=6..9).
"""

from __future__ import annotations

from api.catalog.versions import load_into_store
from api.ingest.batches import ingest_batch
from factories import T0, connection, listener
from tracer.catalog import parse_catalog
from tracer.records import format_ts

__all__ = ["T0", "AT", "WINDOW", "CATALOG", "EXPECTED_OPEN", "build"]

#: ``at`` and ``window`` covering the whole fixture: [T0, T0 + 600).
AT = T0 + 600
WINDOW = 600

CATALOG = """
version: 1
areas:
  - {name: shop, title: Shop, owner: team-shop,
     links: [{kind: dashboard, title: Shop board, url: "https://grafana.example.com/d/shop"}]}
  - {name: pay, title: Payments}
  - {name: checkout-flow, kind: process, services: [web, ledger]}
services:
  - name: web
    area: shop
    match: {comm: [nginx]}
    links: [{kind: oncall, title: Web on-call, url: "https://oncall.example.com/web"}]
  - {name: api, area: shop, match: {comm: [java]}}
  - {name: batch, area: shop, match: {comm: [cron]}}
  - {name: ledger, area: pay, match: {comm: [ledgerd]}}
  - {name: db, area: pay, match: {cidrs: [10.9.0.0/24], ports: [5432]}}
externals:
  - {name: stripe, area: pay, cidrs: [203.0.113.0/26]}
"""

#: (client, server) -> time-averaged open connections over [T0, T0+600).
EXPECTED_OPEN = {
    ("web", "api"): 9 * 2 * 60 / 600,
    ("api", "ledger"): 9 * 60 / 600,
    ("ledger", "api"): 4 * 60 / 600,
    ("ledger", "stripe"): 9 * 60 / 600,
    ("api", "db"): (5 * 3 * 60 + 4 * 9 * 60) / 600,
    ("web", "INTERNET"): 5 * 60 / 600,
    ("INTERNET", "web"): 9 * 4 * 60 / 600,
    ("batch", "web"): 9 * 60 / 600,
    ("web", "redis"): 9 * 60 / 600,
}

_HOST_IP = {"h-web": "10.0.0.1", "h-api1": "10.0.0.2", "h-api2": "10.0.0.3", "h-led": "10.0.0.5",
            "h-led2": "10.0.0.2", "h-batch": "10.0.0.9"}


def _out(i: int, host: str, service: str, remote: str, port: int, open_: int = 1, **kw):
    return connection(ts=format_ts(T0 + 60 * i), interval_s=60, host=host, host_ip=_HOST_IP[host],
                      service=service, comm=service, direction="outbound", local_ip=_HOST_IP[host],
                      local_port=0, remote_ip=remote, remote_port=port, open=open_, **kw)


def _in(i: int, host: str, service: str, port: int, remote: str, open_: int = 1, **kw):
    return connection(ts=format_ts(T0 + 60 * i), interval_s=60, host=host, host_ip=_HOST_IP[host],
                      service=service, comm=service, direction="inbound", local_ip=_HOST_IP[host],
                      local_port=port, remote_ip=remote, remote_port=0, open=open_, connects=0,
                      accepts=kw.pop("accepts", 1), **kw)


def _lis(i: int, host: str, service: str, ip: str, port: int):
    return listener(ts=format_ts(T0 + 60 * i), host=host, service=service, comm=service, ip=ip, port=port)


def records() -> tuple[list[dict], list[dict]]:
    """(connections, listeners) of the fixture."""
    conns: list[dict] = []
    lis: list[dict] = []
    for i in range(1, 10):
        before = i <= 5
        lis += [_lis(i, "h-web", "web", "::", 80), _lis(i, "h-led", "ledger", "10.0.0.5", 9000),
                _lis(i, "h-web", "redis", "127.0.0.1", 6379), _lis(i, "h-led", "othercache", "127.0.0.1", 6379)]
        if before:
            lis.append(_lis(i, "h-api1", "api", "10.0.0.2", 8080))
        else:
            lis += [_lis(i, "h-api2", "api", "10.0.0.3", 8080), _lis(i, "h-led2", "ledger", "10.0.0.2", 8080)]
        api_host = "h-api1" if before else "h-api2"
        # web -> api, seen from both ends (inbound only recorded before the deploy)
        conns.append(_out(i, "h-web", "web", "10.0.0.2" if before else "10.0.0.3", 8080, open_=2,
                          connects=10, failures=1))
        if before:
            conns.append(_in(i, "h-api1", "api", 8080, "10.0.0.1", open_=2, accepts=9))
        # api -> ledger: h-led before, the reused 10.0.0.2:8080 after
        conns.append(_out(i, api_host, "api", "10.0.0.5" if before else "10.0.0.2",
                          9000 if before else 8080))
        # api -> db (untraced, catalog range), tripled after the deploy
        conns.append(_out(i, api_host, "api", "10.9.0.7", 5432, open_=3 if before else 9))
        # ledger -> stripe (external) and, after the deploy, ledger -> api (a cycle)
        conns.append(_out(i, "h-led", "ledger", "203.0.113.10", 443))
        if not before:
            conns.append(_out(i, "h-led", "ledger", "10.0.0.3", 8080))
        # web -> somewhere unknown (INTERNET), only before the deploy
        if before:
            conns.append(_out(i, "h-web", "web", "192.0.2.50", 443))
        # INTERNET -> web (inbound only), batch -> web's wildcard listener, web -> its own redis
        conns.append(_in(i, "h-web", "web", 80, "198.51.100.7", open_=4, accepts=5))
        conns.append(_out(i, "h-batch", "batch", "10.0.0.1", 80))
        conns.append(_out(i, "h-web", "web", "127.0.0.1", 6379))
    return conns, lis


def build(store) -> None:
    """Load the catalog and ingest the records into a migrated ``store``."""
    load_into_store(store, parse_catalog(CATALOG, "fixture"), source="fixture", now=T0)
    conns, lis = records()
    for kind, batch in (("listeners", lis), ("connections", conns)):
        result = ingest_batch(store, kind, batch, batch_id="fixture", source="test")
        assert not result.rejected, result.rejected
