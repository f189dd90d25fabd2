"""The ``store`` fixture: each test's database is as good as a freshly migrated one, and its own."""

import pytest

import fixtures
from api.ingest.batches import ingest_batch
from api.storage import open_store
from factories import connection
from schema_copy import objects


def shape(store, db):
    """``db``'s objects with its name taken out of their DDL, and its schema ledger."""
    found = [(name, engine, ddl.replace(f"{db}.", "DB."), rows) for name, engine, ddl, rows in objects(store, db)]
    ledger = store.query(f"SELECT version, name, checksum FROM {db}.schema_migrations ORDER BY version")
    return found, ledger


def table_rows(store, db):
    return {name: rows for name, _, _, rows in objects(store, db) if rows is not None}


@pytest.fixture
def migrated(chdb_dir):
    s = open_store(f"chdb://{chdb_dir}?database=t_from_scratch", role="pytest")
    s.execute("DROP DATABASE IF EXISTS t_from_scratch SYNC")
    s.migrate()
    yield s
    s.close()


def test_a_copy_is_what_migrating_makes_and_rolls_up_into_its_own_tables(store, store_template, migrated):
    assert shape(store, store.db) == shape(migrated, migrated.db)
    assert store.migrate() == []
    template_rows = table_rows(store, store_template.db)
    fixtures.build(store)
    fixtures.build(migrated)
    rows = table_rows(store, store.db)
    assert rows == table_rows(migrated, migrated.db)
    assert rows["connections"] and rows["edges_1m"] and rows["listener_spans"]
    # the copy's views read and write the copy: nothing reached the template
    assert table_rows(store, store_template.db) == template_rows


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_starts_empty_and_stores_a_batch_another_test_stored(store, store_template, turn):
    """Every test here sends batch ``same``: a database shared between tests
    would hold the other test's rows, or drop this batch as a replay."""
    assert table_rows(store, store.db) == table_rows(store, store_template.db)
    result = ingest_batch(store, "connections", [connection(pid=1), connection(pid=2)], batch_id="same",
                          source="test")
    assert not result.rejected
    assert store.query(f"SELECT pid FROM {store.db}.connections ORDER BY pid") == [(1,), (2,)]
