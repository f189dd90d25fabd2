"""Writing the catalog to ClickHouse and reading it back.

Every load writes a complete new *version* of the catalog into
``catalog_areas``, ``catalog_services``, ``catalog_externals`` and
``catalog_virtuals`` (services' virtual addresses, one row per entry) and
only then one row into ``catalog_loads``.  Readers take the highest version found
in ``catalog_loads``, so a load that dies half-way leaves rows nobody reads
instead of a half-old, half-new catalog.  Old versions stay, which lets the
graph be drawn with the catalog of any past moment.

Versions are ``max(version in any catalog table) + 1``: counting the
orphans of a failed load too means their version number is never reused.
Two loads running at the same moment could pick the same number; catalog
loads are rare, deliberate operations (one CI job, one operator), so they
are expected to be serialised by whoever runs them.

Only ``db``, ``insert_rows(table, rows, dedup_token)`` and ``query(sql,
params) -> list[tuple]`` of the ``Store`` are used (the tests stand in a
small fake).
``catalog_to_rows``/``catalog_from_rows`` turn a ``Catalog`` (the model in
``tracer/catalog.py``) into the tables' rows and back.

``phobos catalog load FILE --store URL`` (``api/commands/phobos.py``) validates the
file with ``tracer.catalog.load_catalog`` and then calls ``load_into_store``.
"""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any, Iterable, Mapping

from api.storage import Store
from tracer.catalog import Area, Catalog, External, Link, Match, Service, Virtual

__all__ = [
    "CATALOG_TABLES",
    "catalog_to_rows",
    "catalog_from_rows",
    "load_into_store",
    "current_version",
    "current_catalog_rows",
    "read_catalog",
]

# Columns in table order, as in sql/; the readers select them by name.
CATALOG_TABLES: dict[str, tuple[str, ...]] = {
    "catalog_areas": ("version", "name", "title", "kind", "owner", "description",
                      "services", "links"),
    "catalog_services": ("version", "name", "area", "title", "owner", "tier", "description",
                         "match", "cidrs", "ports", "links"),
    "catalog_externals": ("version", "name", "area", "description", "cidrs", "hostnames",
                          "ports"),
    "catalog_virtuals": ("version", "service", "position", "cidrs", "ports", "sources"),
    "catalog_loads": ("version", "loaded_at", "source", "checksum", "areas", "services",
                      "externals"),
}
# catalog_loads last: its row is what makes a version visible.
_WRITE_ORDER = ("catalog_areas", "catalog_services", "catalog_externals", "catalog_virtuals",
                "catalog_loads")
# How each table's rows are read back in a stable order.
_ORDER_BY = {"catalog_virtuals": "service, position", "catalog_loads": ""}
# The rules of a service's ``match`` that are lists of text.
_MATCH_LISTS = ("comm", "exe", "cmdline", "systemd_unit", "hosts", "cidrs")


def catalog_to_rows(catalog: Catalog, version: int, source: str = "",
                    loaded_at: int = 0) -> dict[str, list[dict]]:
    """Rows for the ``catalog_*`` tables, all stamped with ``version``.

    ``catalog_loads`` holds the single row that makes the version current;
    it must be written after the other tables.  The ``cidrs`` columns
    hold IPv4 ranges in IPv4-mapped IPv6 form (``10.1.2.0/24`` becomes
    ``::ffff:10.1.2.0/120``) because addresses are stored as IPv6, so
    ``isIPAddressInRange(toString(ip), c)`` works for both families.
    ``match`` of a service is the JSON of its rules plus ``order``, its
    position in the file, since the tables are sorted by name and matching
    depends on file order.
    """
    areas = [{
        "version": version, "name": a.name, "title": a.title, "kind": a.kind,
        "owner": a.owner, "description": a.description, "services": list(a.services),
        "links": _links_json(a.links),
    } for a in catalog.areas]
    services = [{
        "version": version, "name": s.name, "area": s.area, "title": s.title,
        "owner": s.owner, "tier": s.tier, "description": s.description,
        "match": json.dumps({"order": i, **s.match.as_dict()}, sort_keys=True),
        "cidrs": [_sql_cidr(c) for c in s.match.cidrs], "ports": list(s.match.ports),
        "links": _links_json(s.links),
    } for i, s in enumerate(catalog.services)]
    externals = [{
        "version": version, "name": e.name, "area": e.area, "description": e.description,
        "cidrs": [_sql_cidr(c) for c in e.cidrs], "hostnames": list(e.hostnames),
        "ports": list(e.ports),
    } for e in catalog.externals]
    virtuals = [{
        "version": version, "service": s.name, "position": i,
        "cidrs": [_sql_cidr(c) for c in v.cidrs], "ports": list(v.ports),
        "sources": [_sql_cidr(c) for c in v.sources],
    } for s in catalog.services for i, v in enumerate(s.virtual)]
    loads = [{
        "version": version, "loaded_at": int(loaded_at), "source": source,
        "checksum": catalog.checksum(), "areas": len(areas), "services": len(services),
        "externals": len(externals),
    }]
    return {"catalog_areas": areas, "catalog_services": services,
            "catalog_externals": externals, "catalog_virtuals": virtuals, "catalog_loads": loads}


def catalog_from_rows(rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> Catalog:
    """Rebuild a catalog from rows shaped like ``catalog_to_rows`` output.

    The rows are trusted (they were validated when loaded); the
    ``catalog_loads`` entry, if present, is ignored.  So
    ``catalog_from_rows(catalog_to_rows(c, v)) == c``.
    """
    areas = tuple(sorted((Area(
        name=r["name"], title=r["title"], kind=r["kind"], owner=r["owner"],
        description=r["description"], services=tuple(r["services"]),
        links=_links_from_json(r["links"]),
    ) for r in rows.get("catalog_areas", ())), key=lambda a: a.name))
    virtual: dict[str, list[tuple[int, Virtual]]] = {}
    for r in rows.get("catalog_virtuals", ()):
        virtual.setdefault(r["service"], []).append((int(r["position"]), Virtual(
            cidrs=tuple(_from_sql_cidr(c) for c in r["cidrs"]),
            ports=tuple(int(p) for p in r["ports"]),
            sources=tuple(_from_sql_cidr(c) for c in r["sources"]))))
    ordered = []
    for r in rows.get("catalog_services", ()):
        m = json.loads(r["match"])
        match = Match(
            **{k: tuple(m.get(k, ())) for k in _MATCH_LISTS},
            k8s_labels=tuple(sorted(m.get("k8s_labels", {}).items())),
            ports=tuple(int(p) for p in m.get("ports", ())),
        )
        ordered.append((m.get("order", 0), r["name"], Service(
            name=r["name"], area=r["area"], title=r["title"], owner=r["owner"],
            tier=int(r["tier"]), description=r["description"], match=match,
            links=_links_from_json(r["links"]),
            virtual=tuple(v for _, v in sorted(virtual.get(r["name"], ()), key=lambda t: t[0])),
        )))
    services = tuple(s for _, _, s in sorted(ordered, key=lambda t: (t[0], t[1])))
    externals = tuple(sorted((External(
        name=r["name"], area=r["area"], description=r["description"],
        cidrs=tuple(_from_sql_cidr(c) for c in r["cidrs"]), hostnames=tuple(r["hostnames"]),
        ports=tuple(int(p) for p in r["ports"]),
    ) for r in rows.get("catalog_externals", ())), key=lambda e: e.name))
    return Catalog(areas=areas, services=services, externals=externals)


def current_version(store: Store) -> int | None:
    """The version readers see, or None when no catalog was ever loaded."""
    rows = store.query(f"SELECT count(), max(version) FROM {store.db}.catalog_loads")
    count, version = rows[0]
    return int(version) if int(count) else None


def _next_version(store: Store) -> int:
    parts = ", ".join(f"(SELECT max(version) FROM {store.db}.{t})" for t in _WRITE_ORDER)
    return int(store.query(f"SELECT greatest({parts})")[0][0]) + 1


def load_into_store(store: Store, catalog: Catalog, source: str, now: float | None = None) -> int:
    """Make ``catalog`` the current catalog of ``store``.

    Parameters
    ----------
    store : Store
        A migrated store.
    catalog : Catalog
        A validated catalog (``load_catalog``/``parse_catalog`` refuse
        invalid files, so nothing invalid gets this far).
    source : str
        Where it came from (file path, git revision ...), kept in
        ``catalog_loads`` for the audit trail.
    now : float, optional
        Load time in epoch seconds; defaults to the current time.

    Returns
    -------
    int
        The version now current.  Loading content identical to the current
        version (same ``checksum``) writes nothing and returns that version,
        so a CI job may load the catalog on every commit.
    """
    current = current_version(store)
    if current is not None:
        rows = store.query(
            f"SELECT checksum FROM {store.db}.catalog_loads WHERE version = {{v:UInt64}}",
            {"v": current},
        )
        if rows and rows[0][0] == catalog.checksum():
            return current
    version = _next_version(store)
    loaded_at = int(time.time() if now is None else now)
    rows = catalog_to_rows(catalog, version, source=source, loaded_at=loaded_at)
    for table in _WRITE_ORDER:
        if rows[table]:
            # The token makes a retried insert of the same batch a no-op.
            store.insert_rows(table, rows[table], dedup_token=f"catalog-v{version}-{table}")
    return version


def current_catalog_rows(store: Store, version: int | None = None) -> dict[str, list[dict]]:
    """The rows of one catalog version (default: the current one).

    Returns
    -------
    dict
        Table name -> list of row dicts, shaped like ``catalog_to_rows``;
        every list is empty when no catalog was loaded.
    """
    if version is None:
        version = current_version(store)
    if version is None:
        return {table: [] for table in CATALOG_TABLES}
    out = {}
    for table, columns in CATALOG_TABLES.items():
        order = _ORDER_BY.get(table, "name")
        order = f" ORDER BY {order}" if order else ""
        result = store.query(
            f"SELECT {', '.join(columns)} FROM {store.db}.{table} "
            f"WHERE version = {{v:UInt64}}{order}",
            {"v": version},
        )
        out[table] = [_plain(dict(zip(columns, row))) for row in result]
    return out


def read_catalog(store: Store, version: int | None = None) -> Catalog:
    """The catalog of one version (default: current); empty if none loaded."""
    return catalog_from_rows(current_catalog_rows(store, version))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    # Back ends hand arrays back as lists, tuples or numpy arrays.
    return {k: list(v) if not isinstance(v, (str, bytes, int, float)) and v is not None else v
            for k, v in row.items()}


def _links_json(links: Iterable[Link]) -> str:
    return json.dumps([link.as_dict() for link in links])


def _links_from_json(text: str) -> tuple[Link, ...]:
    return tuple(Link(**d) for d in json.loads(text or "[]"))


def _sql_cidr(cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    if net.version == 4:
        return f"::ffff:{net.network_address}/{96 + net.prefixlen}"
    return str(net)


def _from_sql_cidr(text: str) -> str:
    net = ipaddress.ip_network(text)
    mapped = net.network_address.ipv4_mapped if net.version == 6 else None
    if mapped is not None and net.prefixlen >= 96:
        return str(ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}"))
    return str(net)
