"""Tests for the service catalog: parsing, errors, matching and storage."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from api.catalog.versions import (CATALOG_TABLES, catalog_from_rows,
                                  catalog_to_rows, current_catalog_rows,
                                  current_version, load_into_store,
                                  read_catalog)
from conftest import require
from tracer.catalog import (MAX_ERRORS, Catalog, CatalogError, load_catalog,
                            parse_catalog)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "api" / "catalog" / "example.yaml"

SMALL = """\
version: 1
areas:
  - name: shop
    owner: team-shop
  - name: money
  - name: buy
    kind: process
    services: [web, pay]
services:
  - name: web
    area: shop
    match: {comm: [nginx]}
  - name: pay
    area: money
    owner: team-money
    tier: 1
    match: {k8s_labels: {app: pay}}
externals:
  - name: psp
    cidrs: [203.0.113.0/24]
"""


def parse(text: str) -> Catalog:
    return parse_catalog(textwrap.dedent(text), source="cat.yaml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse(text)
    return info.value.errors


def one_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


# -- the example and round trips -----------------------------------------------

def test_example_loads_cleanly():
    cat = load_catalog(EXAMPLE)
    kinds = [a.kind for a in cat.areas]
    assert kinds.count("process") >= 1 and kinds.count("area") >= 5
    assert len(cat.services) >= 15 and len(cat.externals) >= 2
    used = {link.kind for x in (*cat.areas, *cat.services) for link in x.links}
    assert used == {"dashboard", "oncall", "deploy", "runbook", "repo", "docs", "logs", "chat"}


def test_yaml_round_trip_is_exact():
    cat = load_catalog(EXAMPLE)
    again = parse_catalog(cat.to_yaml())
    assert again == cat
    assert again.to_yaml() == cat.to_yaml()
    assert again.checksum() == cat.checksum()


def test_rows_round_trip_keeps_service_order():
    cat = load_catalog(EXAMPLE)
    rows = catalog_to_rows(cat, 7, source="x", loaded_at=1)
    # Shuffle as a table sorted by name would.
    rows["catalog_services"].sort(key=lambda r: r["name"])
    assert catalog_from_rows(rows) == cat
    assert [s.name for s in catalog_from_rows(rows).services] == [s.name for s in cat.services]


def test_rows_have_exactly_the_sql_columns():
    sql = "\n".join(p.read_text() for p in sorted((ROOT / "sql").glob("*.sql")))
    rows = catalog_to_rows(load_catalog(EXAMPLE), 1, source="s", loaded_at=0)
    for table, columns in CATALOG_TABLES.items():
        body = re.search(r"CREATE TABLE IF NOT EXISTS \$db\." + table + r"\s*\((.*?)\)\s*ENGINE",
                         sql, re.S)
        assert body, table
        sql_columns = tuple(line.split()[0] for line in body.group(1).splitlines()
                            if line.strip())
        assert sql_columns == columns
        assert all(tuple(row) == columns for row in rows[table]), table


def test_row_cidrs_are_ipv6_for_sql_and_convert_back():
    cat = parse("""\
        version: 1
        externals: [{name: e, cidrs: [10.1.0.0/16, 192.0.2.7, "2001:db8::/32"]}]
        """)
    row = catalog_to_rows(cat, 1)["catalog_externals"][0]
    assert row["cidrs"] == ["::ffff:10.1.0.0/112", "::ffff:192.0.2.7/128", "2001:db8::/32"]
    assert catalog_from_rows(catalog_to_rows(cat, 1)) == cat


def test_alias_bomb_is_refused_quickly():
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    errors = errors_of("version: 1\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + levels)
    assert "document too deeply nested or too large" in errors[0]


def test_checksum_ignores_formatting_but_not_content():
    a = parse(SMALL)
    reformatted = SMALL.replace("match: {comm: [nginx]}", "match:\n      comm:\n        - nginx")
    assert parse(reformatted).checksum() == a.checksum()
    assert parse(SMALL.replace("nginx", "caddy")).checksum() != a.checksum()


def test_defaults_and_normalisation():
    cat = parse("""\
        version: 1
        areas: [{name: shop, owner: team-shop}]
        services:
          - name: web
            area: shop
            match:
              comm: nginx                # a single string is a list of one
              cidrs: [10.0.0.7]          # an address is a /32
              k8s_labels: {enabled: true, version: 1.0}
        externals: [{name: ext, hostnames: [API.Example.COM.]}]
        """)
    web = cat.service("web")
    assert web.title == "web" and web.owner == "team-shop" and web.tier == 0
    assert web.match.comm == ("nginx",)
    assert web.match.cidrs == ("10.0.0.7/32",)
    # Label values keep their source text: Kubernetes labels are strings.
    assert dict(web.match.k8s_labels) == {"enabled": "true", "version": "1.0"}
    assert cat.external("ext").hostnames == ("api.example.com",)


# -- error messages ------------------------------------------------------------

def test_syntax_error_has_line_and_column():
    msg = one_error("""\
        version: 1
        areas:
          - name: shop
            title: [unclosed
        services: []
        """)
    assert msg.startswith("cat.yaml:5:")
    assert "YAML syntax error" in msg and "started at line 4" in msg


def test_tab_indentation_is_a_syntax_error_with_position():
    msg = one_error("version: 1\nareas:\n\t- name: shop\n")
    assert msg.startswith("cat.yaml:3:1:") and "YAML syntax error" in msg


def test_unknown_key_suggests_the_right_one():
    msg = one_error("""\
        version: 1
        areas:
          - name: shop
            ownr: team-shop
        """)
    assert msg == "cat.yaml:4:5: unknown key 'ownr' in area 'shop'; did you mean 'owner'?"


def test_unknown_match_rule_and_top_level_key():
    errors = errors_of("""\
        version: 1
        areas: [{name: shop}]
        service: []
        services:
          - name: web
            area: shop
            match: {command: [nginx]}
        """)
    assert errors == [
        "cat.yaml:3:1: unknown key 'service' in the catalog; did you mean 'services'?",
        "cat.yaml:7:13: unknown key 'command' in the match rules of service 'web'; "
        "did you mean 'comm'?",
    ]


def test_every_error_is_reported_in_file_order():
    errors = errors_of("""\
        version: 2
        areas:
          - name: Shop
          - name: money
          - name: money
        services:
          - name: web
            area: shopp
            tier: 9
            match:
              exe: ["("]
              cidrs: [10.0.0.1/8, not-a-net]
              ports: [0, 70000, "80"]
            links:
              - {kind: dashbord, url: "https://x.example"}
              - {kind: oncall, url: "ftp://x.example"}
              - {kind: repo}
        """)
    expected = [
        ("1:10", "unsupported catalog version 2"),
        ("3:11", "'Shop' is not a valid name"),
        ("5:11", "area 'money' is defined twice (first at line 4)"),
        ("8:11", "area 'shopp' is not defined"),
        ("9:11", "tier 9 of service 'web' must be a whole number from 1"),
        ("11:13", "is not a valid regular expression"),
        ("12:15", "'10.0.0.1/8' in the match rules of service 'web' has host bits set; "
                  "did you mean 10.0.0.0/8?"),
        ("12:27", "'not-a-net' in the match rules of service 'web' is not an IP range"),
        ("13:15", "port 0 "),
        ("13:18", "port 70000 "),
        ("13:25", "port '80' in the match rules of service 'web' is quoted text; "
                  "write it without quotes"),
        ("15:16", "unknown link kind 'dashbord'; did you mean 'dashboard'?"),
        ("16:29", "link url 'ftp://x.example' must be an absolute http:// or https://"),
        ("17:9", "a link of service 'web' is missing required key 'url'"),
    ]
    assert len(errors) == len(expected), "\n".join(errors)
    for message, (where, text) in zip(errors, expected):
        assert message.startswith(f"cat.yaml:{where}: "), message
        assert text in message, message


def test_references_between_sections():
    errors = errors_of("""\
        version: 1
        areas:
          - name: shop
          - name: buy
            kind: process
            services: [web, cart]
          - name: misc
            services: [web]
        services:
          - name: web
            area: buy
        externals:
          - name: web
            area: nowhere
            hostnames: [x.example]
          - name: bare
        """)
    assert [e.split(": ", 1)[0] for e in errors] == [
        "cat.yaml:6:21", "cat.yaml:8:15", "cat.yaml:11:11", "cat.yaml:13:11",
        "cat.yaml:14:11", "cat.yaml:16:5"]
    assert "service 'cart' is not defined" in errors[0]
    assert "'services' is only for kind: process" in errors[1]
    assert "'buy' is a business process, not an area" in errors[2]
    assert "'web' is already a service (line 10)" in errors[3]
    assert "area 'nowhere' is not defined" in errors[4]
    assert "external 'bare' needs 'cidrs' or 'hostnames'" in errors[5]


def test_external_cannot_live_in_a_process():
    msg = one_error("""\
        version: 1
        areas: [{name: a}, {name: p, kind: process, services: [s]}]
        services: [{name: s, area: a}]
        externals: [{name: e, area: p, hostnames: [e.example]}]
        """)
    assert msg.startswith("cat.yaml:4:29: 'p' is a business process, not an area")


def test_duplicate_yaml_key_is_not_silently_overwritten():
    msg = one_error("""\
        version: 1
        areas:
          - name: shop
            name: shop2
        """)
    assert msg == "cat.yaml:4:5: duplicate key 'name' (first at line 3); keep only one"


def test_wrong_types_say_what_to_do():
    errors = errors_of("""\
        version: 1
        areas:
          - name: no
          - name: shop
            title: 12
        services: {web: 1}
        """)
    assert errors[0].startswith("cat.yaml:3:11: 'name' of an area must be text, got the boolean "
                                "false; quote the value")
    assert errors[1].startswith("cat.yaml:5:12: 'title' of area 'shop' must be text, got the "
                                "number 12")
    assert errors[2].startswith("cat.yaml:6:11: 'services' must be a list")


def test_comm_longer_than_the_kernel_keeps_is_refused():
    msg = one_error("""\
        version: 1
        areas: [{name: shop}]
        services: [{name: web, area: shop, match: {comm: [very-long-process-name]}}]
        """)
    assert "cat.yaml:3:51: comm 'very-long-process-name' is longer than 15 bytes" in msg


def test_errors_are_capped():
    services = "".join(f"  - {{name: s{i}, area: missing}}\n" for i in range(MAX_ERRORS + 10))
    errors = errors_of("version: 1\nservices:\n" + services)
    assert len(errors) == MAX_ERRORS + 1
    assert "and 10 more errors not shown" in errors[-1]


@pytest.mark.parametrize("text, expected", [
    ("", "cat.yaml:1:1: the catalog is empty"),
    ("# only a comment\n", "cat.yaml:1:1: the catalog is empty"),
    ("- a\n- b\n", "cat.yaml:1:1: the catalog must be a mapping"),
    ("areas: []\n", "cat.yaml:1:1: the catalog is missing 'version: 1'"),
    ("version: 1\n---\nversion: 1\n", "cat.yaml:2:1: YAML syntax error"),
    ("version: 1\nareas: [{name: a, links: !!python/object:os.system x}]\n",
     "cat.yaml:2:26: cannot read this value"),
])
def test_malformed_documents(text, expected):
    assert one_error(text).startswith(expected)


def test_load_catalog_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nareas: [{name: shop, colour: red}]\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert info.value.errors == [f"{path}:2:22: unknown key 'colour' in area 'shop'; "
                                 "allowed: name, title, kind, owner, description, services, links"]
    assert str(path) in str(info.value)
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "missing.yaml")


# -- matching ------------------------------------------------------------------

def test_match_service_rules():
    cat = load_catalog(EXAMPLE)
    m = cat.match_service
    assert m({"comm": "ledger"}) == "ledger"
    assert m({"exe": "/opt/ledger/bin/ledgerd"}) == "ledger"
    assert m({"cmdline": ["java", "-jar", "/srv/pricing-2.3.1.jar"]}) == "pricing"
    assert m({"unit": "shipping-worker@3.service"}) == "shipping"
    assert m({"labels": {"app": "cart", "tier": "backend", "x": "y"}}) == "cart"
    assert m({"labels": {"app": "cart"}}) is None      # a selector needs every label
    # Location rules narrow identity rules; first match in file order wins.
    assert m({"comm": "postgres", "ip": "::ffff:10.30.1.9", "port": 5432}) == "postgres-payments"
    assert m({"comm": "postgres", "ip": "10.99.0.1", "port": 5432}) == "postgres-shared"
    assert m({"comm": "postgres", "ip": "10.30.1.9"}) is None
    assert m({"comm": "nginx", "host": "edge-2.example.net", "port": 443}) == "edge-proxy"
    assert m({"comm": "nginx", "host": "build-1", "port": 443}) is None
    assert m({"unit": "payment-gateway.service", "ip": "10.20.0.5"}) == "payment-gateway"
    assert m({"unit": "payment-gateway.service", "ip": "10.21.0.5"}) is None
    assert m({}) is None
    assert m({"comm": "", "exe": None, "labels": None, "port": "x"}) is None


def test_location_only_rules_and_empty_rules():
    cat = parse("""\
        version: 1
        areas: [{name: a}]
        services:
          - {name: nothing, area: a}
          - {name: db-hosts, area: a, match: {cidrs: ["10.5.0.0/16", "2001:db8::/32"]}}
        """)
    assert cat.match_service({"ip": "10.5.3.4"}) == "db-hosts"
    assert cat.match_service({"ip": "2001:db8::1"}) == "db-hosts"
    assert cat.match_service({"ip": "10.6.3.4", "comm": "nothing"}) is None


def test_match_external():
    cat = parse("""\
        version: 1
        externals:
          - {name: wide, cidrs: [203.0.0.0/16]}
          - {name: narrow, cidrs: [203.0.113.0/24], ports: [443]}
          - {name: saas, hostnames: ["*.saas.example", saas.example]}
        """)
    assert cat.match_external(ip="203.0.113.5", port=443) == "narrow"
    assert cat.match_external(ip="::ffff:203.0.113.5") == "narrow"
    assert cat.match_external(ip="203.0.113.5", port=80) == "wide"
    assert cat.match_external(hostname="API.saas.example") == "saas"
    assert cat.match_external(hostname="saas.example") == "saas"
    assert cat.match_external(hostname="notsaas.example") is None
    assert cat.match_external(ip="198.51.100.1") is None


# -- storage ---------------------------------------------------------------------

class FakeStore:
    """Just enough of a store (api.storage.Store) for the catalog's queries."""

    db = "phobos"

    def __init__(self, fail_on: str | None = None):
        self.tables: dict[str, list[dict]] = {t: [] for t in CATALOG_TABLES}
        self.fail_on = fail_on
        self.inserts: list[tuple[str, str | None]] = []

    def insert_rows(self, table, rows, dedup_token=None):
        if table == self.fail_on:
            raise RuntimeError("connection lost")
        assert all(set(r) == set(CATALOG_TABLES[table]) for r in rows)
        self.inserts.append((table, dedup_token))
        self.tables[table].extend(dict(r) for r in rows)
        return len(rows)

    def _max(self, table):
        return max((r["version"] for r in self.tables[table]), default=0)

    def query(self, sql, params=None):
        if sql.startswith("SELECT greatest("):
            return [(max(self._max(t) for t in CATALOG_TABLES),)]
        if sql.startswith("SELECT count(), max(version)"):
            return [(len(self.tables["catalog_loads"]), self._max("catalog_loads"))]
        m = re.match(r"SELECT (.*) FROM phobos\.(\w+) WHERE version = \{v:UInt64\}", sql)
        assert m, sql
        columns = [c.strip() for c in m.group(1).split(",")]
        rows = [r for r in self.tables[m.group(2)] if r["version"] == params["v"]]
        return [tuple(r[c] for c in columns) for r in rows]


def test_load_into_store_and_read_back():
    store = FakeStore()
    assert current_version(store) is None
    assert read_catalog(store) == Catalog()
    cat = load_catalog(EXAMPLE)
    assert load_into_store(store, cat, source="example.yaml", now=1_700_000_000) == 1
    assert read_catalog(store) == cat
    assert [t for t, _ in store.inserts][-1] == "catalog_loads"
    assert all(token == f"catalog-v1-{t}" for t, token in store.inserts)
    load = current_catalog_rows(store)["catalog_loads"][0]
    assert load["loaded_at"] == 1_700_000_000 and load["checksum"] == cat.checksum()
    assert (load["areas"], load["services"], load["externals"]) == (7, 18, 3)
    # Unchanged content keeps the version; changed content makes a new one.
    assert load_into_store(store, cat, source="again") == 1
    small = parse(SMALL)
    assert load_into_store(store, small, source="small") == 2
    assert read_catalog(store) == small
    assert read_catalog(store, version=1) == cat


def test_failed_load_is_invisible_and_its_version_not_reused():
    store = FakeStore()
    cat = load_catalog(EXAMPLE)
    load_into_store(store, cat, source="a")
    store.fail_on = "catalog_externals"
    with pytest.raises(RuntimeError):
        load_into_store(store, parse(SMALL), source="b")
    assert current_version(store) == 1 and read_catalog(store) == cat
    store.fail_on = None
    assert load_into_store(store, parse(SMALL), source="b") == 3
    assert read_catalog(store) == parse(SMALL)


def test_broken_file_reaches_no_store(tmp_path):
    store = FakeStore()
    cat = load_catalog(EXAMPLE)
    load_into_store(store, cat, source="good")
    bad = tmp_path / "bad.yaml"
    # Valid up to the last entry: nothing of the first part may be loaded.
    bad.write_text(EXAMPLE.read_text() + "  - {name: late, cidrs: [10.0.0.0/33]}\n")
    with pytest.raises(CatalogError) as info:
        load_into_store(store, load_catalog(bad), source="bad")
    lines = EXAMPLE.read_text().count("\n")
    assert info.value.errors == [f"{bad}:{lines + 1}:26: '10.0.0.0/33' in external 'late' is not "
                                 "an IP range; write it as 10.1.2.0/24, 2001:db8::/32 or a "
                                 "single address"]
    assert current_version(store) == 1 and read_catalog(store) == cat
    assert len(store.inserts) == 5  # one insert per table of the good version


def _require_chdb():
    try:
        import chdb  # noqa: F401
        from api.storage import embedded  # noqa: F401
    except ImportError as exc:
        require(False, f"chDB not available: {exc}")


def test_round_trip_through_chdb(tmp_path):
    _require_chdb()
    from api.storage import open_store

    url = "chdb:///" + str(tmp_path / "db")
    store = open_store(url)
    try:
        store.migrate()
        cat = load_catalog(EXAMPLE)
        assert load_into_store(store, cat, source=str(EXAMPLE)) == 1
        assert read_catalog(store) == cat
        small = parse(SMALL)
        assert load_into_store(store, small, source="small") == 2
        assert read_catalog(store) == small
        assert read_catalog(store, version=1) == cat
        # cidrs/ports columns let SQL resolve addresses without parsing JSON.
        rows = store.query(
            f"SELECT name FROM {store.db}.catalog_services WHERE version = 1 "
            "AND arrayExists(c -> isIPAddressInRange(toString(toIPv6('10.30.1.9')), c), cidrs) "
            "AND has(ports, 5432)")
        assert rows == [("postgres-payments",)]
        rows = store.query(
            f"SELECT name FROM {store.db}.catalog_externals WHERE version = 1 "
            "AND arrayExists(c -> isIPAddressInRange('2001:db8:25::9', c), cidrs)")
        assert rows == [("corporate-smtp",)]
    finally:
        store.close()


# -- virtual addresses -------------------------------------------------------------

VIRTUAL = """\
version: 1
areas: [{name: shop}]
services:
  - name: web
    area: shop
    virtual:
      - cidrs: [198.51.100.10]
        ports: [443]
        sources: [10.99.0.0/24]
  - name: db
    area: shop
    virtual:
      - {cidrs: ["198.51.100.10"], ports: [5432]}
      - {cidrs: ["2001:db8:5::/64"]}
"""


def test_virtual_entries_are_read_matched_and_round_tripped():
    cat = parse(VIRTUAL)
    web = cat.service("web")
    assert [v.as_dict() for v in web.virtual] == [
        {"cidrs": ["198.51.100.10/32"], "ports": [443], "sources": ["10.99.0.0/24"]}]
    # one balancer address in front of two services, on different ports
    assert cat.match_virtual("198.51.100.10", 443) == "web"
    assert cat.match_virtual("::ffff:198.51.100.10", 5432) == "db"
    assert cat.match_virtual("198.51.100.10", 80) is None
    assert cat.match_virtual("2001:db8:5::9", 80) == "db"
    assert web.virtual[0].is_source("10.99.0.7") and not web.virtual[0].is_source("10.98.0.7")
    assert parse_catalog(cat.to_yaml()) == cat
    rows = catalog_to_rows(cat, 3)
    assert rows["catalog_virtuals"] == [
        {"version": 3, "service": "web", "position": 0, "cidrs": ["::ffff:198.51.100.10/128"],
         "ports": [443], "sources": ["::ffff:10.99.0.0/120"]},
        {"version": 3, "service": "db", "position": 0, "cidrs": ["::ffff:198.51.100.10/128"],
         "ports": [5432], "sources": []},
        {"version": 3, "service": "db", "position": 1, "cidrs": ["2001:db8:5::/64"], "ports": [],
         "sources": []}]
    rows["catalog_virtuals"].reverse()  # as a table sorted otherwise hands them back
    assert catalog_from_rows(rows) == cat
    # a catalog without virtual entries keeps its checksum of before they existed
    assert "virtual" not in parse(SMALL).as_dict()["services"][0]


def test_virtual_entries_are_validated_with_positions():
    errors = errors_of("""\
        version: 1
        areas: [{name: shop}]
        services:
          - name: web
            area: shop
            virtual:
              - {cidrs: [198.51.100.0/28], ports: [443, 0]}
              - {ports: [443]}
              - {cidrs: [], sorces: [10.0.0.0/8]}
              - {cidrs: [198.51.100.300, 10.0.0.1/8], sources: [bad]}
              - 198.51.100.1
          - name: api
            area: shop
            virtual: {cidrs: [10.0.0.0/8]}
          - name: db
            area: shop
            virtual:
              - {cidrs: ["198.51.100.8/29", "2001:db8::/32"], ports: ["443"]}
              - {cidrs: ["::ffff:198.51.100.10/128"]}
              - {cidrs: [198.51.100.10], ports: [5432]}
        """)
    web = "a virtual entry of service 'web'"
    assert errors == [
        f"cat.yaml:7:49: port 0 in {web} is not a TCP port; use a whole number from 1 to 65535",
        f"cat.yaml:8:9: {web} is missing required key 'cidrs': the addresses that stand for "
        "the service",
        f"cat.yaml:9:17: 'cidrs' of {web} is empty; list the addresses that stand for the service",
        f"cat.yaml:9:21: unknown key 'sorces' in {web}; did you mean 'sources'?",
        f"cat.yaml:10:18: '198.51.100.300' in {web} is not an IP range; write it as 10.1.2.0/24, "
        "2001:db8::/32 or a single address",
        f"cat.yaml:10:34: '10.0.0.1/8' in {web} has host bits set; did you mean 10.0.0.0/8?",
        f"cat.yaml:10:57: 'bad' in {web} is not an IP range; write it as 10.1.2.0/24, "
        "2001:db8::/32 or a single address",
        "cat.yaml:11:9: each entry of 'virtual' in service 'web' must be a mapping "
        "{cidrs, ports, sources}",
        "cat.yaml:14:14: 'virtual' of service 'api' must be a list of mappings such as "
        "- {cidrs: [198.51.100.10], ports: [443]}",
        # a port refused leaves the entry on every port, so it meets web's 443 too
        "cat.yaml:18:18: virtual range '198.51.100.8/29' of service 'db' overlaps "
        "'198.51.100.0/28' of service 'web' (line 7) on port 443; an address stands for one "
        "service: narrow a range or give the entries different ports",
        "cat.yaml:18:63: port '443' in a virtual entry of service 'db' is quoted text; write it "
        "without quotes",
        # every port of db's second entry meets 443 of web's first (an IPv4-mapped range
        # is the IPv4 one); db's third, on 5432, meets nothing
        "cat.yaml:19:18: virtual range '198.51.100.10/32' of service 'db' overlaps "
        "'198.51.100.0/28' of service 'web' (line 7) on port 443; an address stands for one "
        "service: narrow a range or give the entries different ports",
    ]


def test_virtual_overlaps_between_services_are_errors_and_within_one_are_not():
    errors = errors_of("""\
        version: 1
        areas: [{name: shop}]
        services:
          - name: web
            area: shop
            virtual:
              - {cidrs: [10.1.0.0/16], ports: [80, 443]}
              - {cidrs: [10.1.2.0/24]}
          - name: api
            area: shop
            virtual:
              - {cidrs: [10.1.2.3], ports: [443, 8443]}
              - {cidrs: [10.1.0.0/16], ports: [8080]}
              - {cidrs: [10.1.0.0/16], ports: [80]}
        """)
    assert errors == [
        "cat.yaml:12:18: virtual range '10.1.2.3/32' of service 'api' overlaps '10.1.0.0/16' of "
        "service 'web' (line 7) on port 443; an address stands for one service: narrow a range "
        "or give the entries different ports",
        "cat.yaml:12:18: virtual range '10.1.2.3/32' of service 'api' overlaps '10.1.2.0/24' of "
        "service 'web' (line 8) on ports 443, 8443; an address stands for one service: narrow a "
        "range or give the entries different ports",
        # web's /24 stands for it on every port, 8080 too
        "cat.yaml:13:18: virtual range '10.1.0.0/16' of service 'api' overlaps '10.1.2.0/24' of "
        "service 'web' (line 8) on port 8080; an address stands for one service: narrow a range "
        "or give the entries different ports",
        "cat.yaml:14:18: virtual range '10.1.0.0/16' of service 'api' overlaps '10.1.0.0/16' of "
        "service 'web' (line 7) on port 80; an address stands for one service: narrow a range or "
        "give the entries different ports",
        "cat.yaml:14:18: virtual range '10.1.0.0/16' of service 'api' overlaps '10.1.2.0/24' of "
        "service 'web' (line 8) on port 80; an address stands for one service: narrow a range or "
        "give the entries different ports",
    ]


def test_many_virtual_addresses_are_checked_quickly():
    import time

    entries = "".join(f"      - {{cidrs: [10.{i // 250}.{i % 250}.0/24], ports: [{1 + i % 3}]}}\n"
                      for i in range(5_000))
    text = ("version: 1\nareas: [{name: a}]\nservices:\n  - name: s\n    area: a\n    virtual:\n"
            + entries + "  - name: t\n    area: a\n    virtual:\n      - {cidrs: [10.0.0.0/8], ports: [9]}\n")
    started = time.perf_counter()
    cat = parse_catalog(text)
    assert len(cat.service("s").virtual) == 5_000
    assert time.perf_counter() - started < 10


def test_catalog_check_reports_virtual_errors(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "vip.yaml"
    path.write_text(VIRTUAL.replace("ports: [5432]", "ports: [443]"))
    out = subprocess.run([sys.executable, "-m", "api.commands.phobos", "catalog", "check", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"{path}:13:18: virtual range '198.51.100.10/32' of service 'db' overlaps" in out.stderr


def test_the_helm_charts_catalog_validates():
    import yaml

    found = []
    for values in sorted((ROOT / "helm").rglob("*values*.yaml")):
        content = ((yaml.safe_load(values.read_text()) or {}).get("catalog") or {}).get("content")
        if content:
            found.append(parse_catalog(content, source=str(values)))
    assert found, "a values file of the chart embeds a catalog"
