"""The catalog as the views and the resolution read it: names, areas and address ranges.

A catalog version (``versions.py``) becomes, once per version and store:

* ``catalog_maps`` - areas, services and externals by name, for what a view
  shows of them (titles, owners, links, a business process's services);
* ``catalog_index`` - the areas of services and the address ranges of
  services' virtual addresses, services and externals, longest prefix
  first, which name the addresses no listener explained when resolved rows
  are read, and the virtual addresses' sources, whose inbound rows the
  traced clients already reported;
* ``lookups_sql`` - the same as ClickHouse ``WITH`` expressions, for the
  resolution SQL that applies the catalog in the query itself.

A server address no listener explained is, in this order, a service's
virtual address (on its ports), in a service's ``match`` range, in an
external's, else ``INTERNET``; a client address skips the virtual ranges
(they stand for servers). What the catalog does not explain has a name too: ``INTERNET`` for an
address, ``UNASSIGNED`` for the area of a service it does not list.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any

from api.storage import Store

__all__ = ["INTERNET", "UNASSIGNED", "CatalogIndex", "catalog_index", "catalog_maps", "lookups_sql", "version_sql",
           "last_version"]

#: The node standing for every address nothing else explains.
INTERNET = "INTERNET"
#: Area of a service the catalog does not name.
UNASSIGNED = "unassigned"


def version_sql(db: str) -> str:
    """The current catalog version, as a scalar subquery."""
    return f"(SELECT max(version) FROM {db}.catalog_loads)"


def _ranges_sql(source: str, name: str, area: str, ports: str) -> str:
    """(first, last, name, area, ports) of every range of ``source`` (a
    table and what it is ARRAY JOINed on as ``cidr``), longest prefix first,
    so a row compares two addresses per range instead of parsing text."""
    prefix = "toUInt8OrZero(splitByChar('/', cidr)[2])"
    return f"""(SELECT groupArray((r.1, r.2, n, a, p)) FROM (
         SELECT IPv6CIDRToRange(toIPv6(splitByChar('/', cidr)[1]), {prefix}) AS r,
                {name} AS n, {area} AS a, {ports} AS p
         FROM {source}
         ORDER BY {prefix} DESC, n))"""


def lookups_sql(db: str, cv: str) -> str:
    """``area_of`` (service -> area) and address ranges as WITH expressions,
    for catalog version ``cv``: ``vip_ranges`` (services' virtual addresses),
    ``svc_ranges`` (services' ``match`` ranges), ``ext_ranges`` (externals),
    ``dst_ranges`` (the first two in the order a server address is looked up
    in) - each (first, last, name, area, ports) - and ``vip_sources``
    (first, last, service) of the virtual addresses' sources."""
    virtuals = f"{db}.catalog_virtuals ARRAY JOIN {{}} AS cidr WHERE version = {cv}"
    return f"""(SELECT mapFromArrays(groupArray(name), groupArray(area))
         FROM {db}.catalog_services WHERE version = {cv}) AS area_of,
      {_ranges_sql(f"{db}.catalog_services ARRAY JOIN cidrs AS cidr WHERE version = {cv}",
                   "name", "area", "ports")} AS svc_ranges,
      {_ranges_sql(f"{db}.catalog_externals ARRAY JOIN cidrs AS cidr WHERE version = {cv}",
                   "name", f"if(area = '', '{INTERNET}', area)", "ports")} AS ext_ranges,
      {_ranges_sql(virtuals.format("cidrs"), "service", "''", "ports")} AS vip_ranges,
      -- virtual addresses first: they stand for a service wherever it runs
      arrayConcat(vip_ranges, svc_ranges) AS dst_ranges,
      (SELECT groupArray((r.1, r.2, service)) FROM (
         SELECT IPv6CIDRToRange(toIPv6(splitByChar('/', cidr)[1]),
                                toUInt8OrZero(splitByChar('/', cidr)[2])) AS r, service
         FROM {virtuals.format("sources")})) AS vip_sources"""


@dataclass(frozen=True)
class CatalogIndex:
    """The catalog as the resolved rows need it: areas of services, the
    address ranges of services' virtual addresses, services and externals,
    longest prefix first, and the sources of the virtual addresses."""

    area_of: dict[str, str]
    services: tuple[tuple[int, int, str, str, frozenset[int]], ...]
    externals: tuple[tuple[int, int, str, str, frozenset[int]], ...]
    virtuals: tuple[tuple[int, int, str, str, frozenset[int]], ...] = ()
    sources: tuple[tuple[int, int, str], ...] = ()

    def area(self, service: str) -> str:
        return self.area_of.get(service) or UNASSIGNED

    @functools.cached_property
    def bounds(self) -> list[tuple[str, str]]:
        """First and last address of every range, as IPv6 text: lets a query
        sum the addresses that no range holds (all of them ``INTERNET``)
        instead of returning them one by one."""
        return [(str(ipaddress.IPv6Address(lo)), str(ipaddress.IPv6Address(hi)))
                for lo, hi, *_ in (*self.virtuals, *self.services, *self.externals)]

    @functools.cached_property
    def ranged(self) -> frozenset[str]:
        """Names an address may turn out to be: services with address ranges or virtual
        addresses, externals, and INTERNET (every address no range holds)."""
        return frozenset({INTERNET, *(name for _lo, _hi, name, *_ in
                                      (*self.services, *self.virtuals, *self.externals))})

    @functools.cached_property
    def source_bounds(self) -> list[tuple[str, str, str]]:
        """(first, last, service) of every virtual address's source range,
        as IPv6 text, for the query that leaves out the rows they explain."""
        return [(str(ipaddress.IPv6Address(lo)), str(ipaddress.IPv6Address(hi)), name)
                for lo, hi, name in self.sources]

    def address(self, text: str, port: int | None) -> tuple[str, str, str]:
        """(kind, name, area) of an address no listener explained; ``port``
        None for a client (ranges then match on the address alone, and
        virtual addresses, which stand for servers, not at all)."""
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return "internet", INTERNET, INTERNET
        value = int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)
        if port is not None:
            for lo, hi, name, _area, ports in self.virtuals:
                if lo <= value <= hi and (not ports or port in ports):
                    return "service", name, self.area(name)
        for lo, hi, name, area, ports in self.services:
            if lo <= value <= hi and (port is None or not ports or port in ports):
                return "service", name, self.area(name)
        for lo, hi, name, area, ports in self.externals:
            if lo <= value <= hi and (port is None or not ports or port in ports):
                return "external", name, area
        return "internet", INTERNET, INTERNET


# Built once per (store, catalog version); a few versions are kept.
_CATALOG_INDEX: dict[tuple[str, int], CatalogIndex] = {}
_CATALOG_MAPS: dict[tuple[str, int], dict[str, Any]] = {}
_LAST_VERSION: dict[str, int] = {}
_LOCK = threading.Lock()


def last_version(store: Store) -> int | None:
    """The newest catalog version this process has indexed for ``store`` (None: none yet), a guess
    of the current one for reads that start before the current one is known."""
    return _LAST_VERSION.get(f"{id(store)}:{store.db}")


def catalog_index(store: Store, version: int) -> CatalogIndex:
    """The catalog of ``version`` as an index, built once per version."""
    db = store.db
    key = (f"{id(store)}:{db}", version)
    index = _CATALOG_INDEX.get(key)
    if index is not None:
        return index
    cv = str(version)
    (row,) = store.query(f"""WITH {lookups_sql(db, cv)}
        SELECT mapKeys(area_of), mapValues(area_of),
               arrayMap(x -> (IPv6NumToString(x.1), IPv6NumToString(x.2), x.3, x.4, x.5), svc_ranges),
               arrayMap(x -> (IPv6NumToString(x.1), IPv6NumToString(x.2), x.3, x.4, x.5), ext_ranges),
               arrayMap(x -> (IPv6NumToString(x.1), IPv6NumToString(x.2), x.3, x.4, x.5), vip_ranges),
               arrayMap(x -> (IPv6NumToString(x.1), IPv6NumToString(x.2), x.3), vip_sources)""")

    def ranges(items: list) -> tuple[tuple[int, int, str, str, frozenset[int]], ...]:
        return tuple((int(ipaddress.IPv6Address(lo)), int(ipaddress.IPv6Address(hi)), name, area,
                      frozenset(int(p) for p in ports)) for lo, hi, name, area, ports in items)

    sources = tuple((int(ipaddress.IPv6Address(lo)), int(ipaddress.IPv6Address(hi)), name)
                    for lo, hi, name in row[5])
    index = CatalogIndex(dict(zip(row[0], row[1])), ranges(row[2]), ranges(row[3]), ranges(row[4]), sources)
    with _LOCK:
        if len(_CATALOG_INDEX) > 16:
            _CATALOG_INDEX.clear()
        _CATALOG_INDEX[key] = index
        _LAST_VERSION[key[0]] = max(version, _LAST_VERSION.get(key[0], version))
    return index


def catalog_maps(store: Store, version: int | None = None) -> dict[str, Any]:
    """The current catalog (or the one of ``version``) as plain lookups for
    the views (read once per catalog version; callers must not change it).

    Returns
    -------
    dict
        ``areas``: name -> row (``kind``, ``title``, ``owner``, ``links`` JSON,
        ``services`` for processes); ``services``: name -> row (``area``,
        ``title``, ``owner``, ``tier``, ``links``); ``externals``: name -> row.
    """
    db = store.db
    if version is None:
        version = int(store.query(f"SELECT toUInt64(max(version)) FROM {db}.catalog_loads")[0][0] or 0)
    key = (f"{id(store)}:{db}", version)
    maps = _CATALOG_MAPS.get(key)
    if maps is not None:
        return maps
    cv = str(version)
    areas = store.query_dicts(
        f"SELECT name, title, kind, owner, description, services, links "
        f"FROM {db}.catalog_areas WHERE version = {cv} ORDER BY name")
    services = store.query_dicts(
        f"SELECT name, area, title, owner, tier, description, links "
        f"FROM {db}.catalog_services WHERE version = {cv} ORDER BY name")
    externals = store.query_dicts(
        f"SELECT name, area, description FROM {db}.catalog_externals WHERE version = {cv} ORDER BY name")
    maps = {
        "areas": {r["name"]: r for r in areas},
        "services": {r["name"]: r for r in services},
        "externals": {r["name"]: r for r in externals},
    }
    with _LOCK:
        if len(_CATALOG_MAPS) > 16:
            _CATALOG_MAPS.clear()
        _CATALOG_MAPS[key] = maps
    return maps

