"""A fresh migrated database for each test, copied from one migrated once per module.

``store.migrate()`` runs every ``sql/`` file, ALTERs included, and checks its
ledger: ~0.4 s on chDB, paid by every test that takes the ``store`` fixture.
Recreating the objects that migration left behind takes a third of that, so
the conftest migrates one template database per module and gives each test a
copy in a database of its own.  A copy is a database as good as a migrated
one: new tables (so no rows and no deduplication log are shared with any
other test), the template's rows (the schema ledger, so ``migrate()`` on a
copy changes nothing), and materialized views that read and write the
copy's own tables.  What the copy holds is read from ``system.tables``, not
listed here, so a new schema file needs nothing in this module;
``tests/test_store_fixture.py`` checks a copy against a database migrated
from scratch.

ClickHouse has no ``CREATE DATABASE ... AS`` and ``RENAME DATABASE`` leaves
materialized views reading and writing the old name (seen with chDB 26.9),
so the copy replays each object's ``create_table_query`` with the template's
name swapped for the copy's.
"""

from __future__ import annotations

import re

from api.storage.interface import Store

__all__ = ["TEMPLATE", "copy_database", "objects"]

#: The template's database name; tests' databases are ``t_<hash>``.
TEMPLATE = "schema_template"


def objects(store: Store, db: str) -> list[tuple[str, str, str, int | None]]:
    """(name, engine, create_table_query, total_rows) of every object of ``db``, by name."""
    return [tuple(row) for row in store.query(
        "SELECT name, engine, create_table_query, total_rows FROM system.tables "
        "WHERE database = {db:String} ORDER BY name", {"db": db})]


def copy_database(store: Store, source: str, target: str) -> None:
    """Make ``target`` (dropped first if it exists) a copy of ``source``.

    Tables first, each with the rows ``source`` holds, then the views, so a
    materialized view sees no rows copied into its source table (its target
    table got the template's own).
    """
    rename = re.compile(rf"\b{re.escape(source)}\.")
    store.execute(f"DROP DATABASE IF EXISTS {target} SYNC")
    store.execute(f"CREATE DATABASE {target}")
    found = objects(store, source)
    for name, engine, ddl, rows in found:
        if not engine.endswith("View"):
            store.execute(rename.sub(f"{target}.", ddl))
            if rows:
                store.execute(f"INSERT INTO {target}.`{name}` SELECT * FROM {source}.`{name}`")
    for name, engine, ddl, _ in found:
        if engine.endswith("View"):
            store.execute(rename.sub(f"{target}.", ddl))
