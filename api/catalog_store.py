"""Writing the catalog to ClickHouse and reading it back.

Every load writes a complete new *version* of the catalog into
``catalog_areas``, ``catalog_services`` and ``catalog_externals`` and only
then one row into ``catalog_loads``.  Readers take the highest version found
in ``catalog_loads``, so a load that dies half-way leaves rows nobody reads
instead of a half-old, half-new catalog.  Old versions stay, which lets the
graph be drawn with the catalog of any past moment.

Versions are ``max(version in any catalog table) + 1``: counting the
orphans of a failed load too means their version number is never reused.
Two loads running at the same moment could pick the same number; catalog
loads are rare, deliberate operations (one CI job, one operator), so they
are expected to be serialised by whoever runs them.

The store is anything with ``db``, ``insert_rows(table, rows, dedup_token)``
and ``query(sql, params) -> list[tuple]`` (``api.storage.Store``).

``phobos catalog load FILE --store URL`` (``api/cli.py``) validates the
file with ``api.catalog.load_catalog`` and then calls ``load_into_store``.
"""

from __future__ import annotations

import time
from typing import Any

from api.catalog import Catalog, CatalogError, load_catalog

__all__ = [
    "CATALOG_TABLES",
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
    "catalog_loads": ("version", "loaded_at", "source", "checksum", "areas", "services",
                      "externals"),
}
# catalog_loads last: its row is what makes a version visible.
_WRITE_ORDER = ("catalog_areas", "catalog_services", "catalog_externals", "catalog_loads")


def current_version(store: Any) -> int | None:
    """The version readers see, or None when no catalog was ever loaded."""
    rows = store.query(f"SELECT count(), max(version) FROM {store.db}.catalog_loads")
    count, version = rows[0]
    return int(version) if int(count) else None


def _next_version(store: Any) -> int:
    parts = ", ".join(f"(SELECT max(version) FROM {store.db}.{t})" for t in _WRITE_ORDER)
    return int(store.query(f"SELECT greatest({parts})")[0][0]) + 1


def load_into_store(store: Any, catalog: Catalog, source: str, now: float | None = None) -> int:
    """Make ``catalog`` the current catalog of ``store``.

    Parameters
    ----------
    store : api.storage.Store
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
    rows = catalog.to_rows(version, source=source, loaded_at=loaded_at)
    for table in _WRITE_ORDER:
        if rows[table]:
            # The token makes a retried insert of the same batch a no-op.
            store.insert_rows(table, rows[table], dedup_token=f"catalog-v{version}-{table}")
    return version


def current_catalog_rows(store: Any, version: int | None = None) -> dict[str, list[dict]]:
    """The rows of one catalog version (default: the current one).

    Returns
    -------
    dict
        Table name -> list of row dicts, shaped like ``Catalog.to_rows``;
        every list is empty when no catalog was loaded.
    """
    if version is None:
        version = current_version(store)
    if version is None:
        return {table: [] for table in CATALOG_TABLES}
    out = {}
    for table, columns in CATALOG_TABLES.items():
        order = " ORDER BY name" if "name" in columns else ""
        result = store.query(
            f"SELECT {', '.join(columns)} FROM {store.db}.{table} "
            f"WHERE version = {{v:UInt64}}{order}",
            {"v": version},
        )
        out[table] = [_plain(dict(zip(columns, row))) for row in result]
    return out


def read_catalog(store: Any, version: int | None = None) -> Catalog:
    """The catalog of one version (default: current); empty if none loaded."""
    return Catalog.from_rows(current_catalog_rows(store, version))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    # Back ends hand arrays back as lists, tuples or numpy arrays.
    return {k: list(v) if not isinstance(v, (str, bytes, int, float)) and v is not None else v
            for k, v in row.items()}
