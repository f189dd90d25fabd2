"""The views' result cache: query results kept for a while, forgotten when new data reaches them.

One cache per app (``app.extensions["phobos_cache"]``, made by
``create_app`` with ``PHOBOS_CACHE_SECONDS``), handed to the views through
their ``ViewContext``; the write endpoints forget what their data changes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

__all__ = ["ResultCache"]


class ResultCache:
    """A small LRU of query results with a time to live, shared by the views.

    Every view of one window (areas, an area, impact, summary ...) starts
    from the same resolved rows, and a UI asks for several of them per
    click; the rows of a past window only change when late records arrive.
    Entries of windows ending in the last ``RECENT`` seconds live
    ``ttl_recent`` seconds (late records), older ones ``ttl``.  Ingest
    forgets only the views of windows its records fall into
    (``forget_from``): the cached views of closed windows stay while no
    late row reaches them; alerts clear it all.  ``ttl=0`` disables it.
    """

    RECENT = 900

    def __init__(self, ttl: float, ttl_recent: float | None = None, size: int = 32):
        self.ttl = ttl
        self.ttl_recent = min(ttl, 20.0) if ttl_recent is None else ttl_recent
        self.size = size
        self._lock = threading.Lock()
        self._data: OrderedDict[Any, tuple[float, Any, int | None]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Any, compute: Callable[[], Any], end: int | None = None) -> Any:
        if self.ttl <= 0:
            return compute()
        now = time.monotonic()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] > now:
                self._data.move_to_end(key)
                self.hits += 1
                return entry[1]
        self.misses += 1
        value = compute()
        recent = end is None or end > time.time() - self.RECENT
        with self._lock:
            self._data[key] = (now + (self.ttl_recent if recent else self.ttl), value, end)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def forget_from(self, ts: int | None) -> None:
        """Forget what records from ``ts`` on can change: views of windows
        ending after it, and entries of no window."""
        if ts is None:
            return
        minute = int(ts) // 60 * 60
        with self._lock:
            for key in [k for k, entry in self._data.items() if entry[2] is None or entry[2] > minute]:
                del self._data[key]
