"""The store: ClickHouse behind one interface - the only room that imports a ClickHouse client.

``open_store(url)`` gives a ``Store`` (``interface.py``) for a URL:

* ``chdb:///path/to/dir`` - embedded ClickHouse in this process (``embedded.py``);
* ``clickhouse://user:pass@host:9000/phobos`` - a server (``server.py``).

What both back ends share is ``base.py``; the schema and its one migration
runner (core set, clustered variant, Kafka-engine set, the analysts' server
user) ``migrations.py``; damage ClickHouse survives quietly (broken parts, a
cut deduplication log) ``damage.py``.  Importing this package loads neither
a client nor pyarrow: a back end is imported when a store of its kind opens.
"""

from __future__ import annotations

from api.config import SETTINGS
from api.storage.interface import (DEFAULT_STORE_URL, ReadLimits, Store, StoreBusyError, StoreError, StoreURL,
                                   parse_store_url)

__all__ = ["DEFAULT_STORE_URL", "ReadLimits", "Store", "StoreBusyError", "StoreError", "StoreURL",
           "open_store", "parse_store_url"]


def open_store(url: str | None = None, role: str = "phobos") -> Store:
    """Open the store at ``url`` (default: ``$PHOBOS_STORE`` or the embedded default).

    ``role`` names this process in the embedded store's lock file, so that a
    second process is told who holds the data directory.
    """
    parsed = parse_store_url(url or SETTINGS.value("STORE") or DEFAULT_STORE_URL)
    if parsed.scheme == "chdb":
        from api.storage.embedded import ChdbStore

        return ChdbStore(parsed, role)
    from api.storage.server import ClickHouseStore

    return ClickHouseStore(parsed, role)
