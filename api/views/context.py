"""What every view reads from: the store, through the result cache, with the views' settings.

Every view of one window (areas, an area, impact, summary ...) starts from
the same resolved rows, and a UI asks for several of them per click, so the
rows, the firing alerts and the other reads go through the ``ResultCache``,
keyed by what they depend on and by the end of their window (ingest forgets
the windows its records fall into).  The catalog is read once per version
(``api.catalog.lookups``).

A view's reads that do not need each other's results run at once
(``ViewContext.gather``): the store answers each on a session or connection
of its own, and both chDB and the ClickHouse driver release the GIL while
they wait, so the window's state, its alerts and the other reads of a side
panel cost the longest of them rather than their sum.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from api.catalog.lookups import catalog_maps, last_version
from api.errors import ApiError
from api.resolution.tcp import Window
from api.storage import Store
from api.views import reads
from api.views.cache import ResultCache
from api.views.params import ViewParams

__all__ = ["ViewContext"]

#: Threads for the reads a request runs beside its own thread; a few are
#: enough, as each read is a store query and the store has a few sessions.
_READS_NAME = "phobos-read"
_READS = ThreadPoolExecutor(max_workers=3, thread_name_prefix=_READS_NAME)

#: Windows ending this close to now still have minutes the stage has not
#: resolved (it waits PHOBOS_RESOLVE_SETTLE, 90 s, after a minute): their
#: rows are not read on the guess that the stage has resolved them all.
LIVE_EDGE_S = 180

#: Whether the last window state read of a store had calls: most stores
#: either never get spans or get them all the time, so the next guess at a
#: window's state follows the last one read (per store: id and database).
_HAD_CALLS: dict[tuple[int, str], bool] = {}


@dataclass(frozen=True)
class ViewContext:
    """The store and cache of one app, and the settings the views take from ``api.config``.

    ``listener_slack``: seconds a listener is believed after its last report
    (``PHOBOS_LISTENER_SLACK``); ``max_nodes``: most nodes a map draws, the
    "N more" node included (``PHOBOS_MAX_NODES``); ``warning_ratio``,
    ``danger_ratio``: failed share of connects from which an edge is
    ``warning``/``danger`` (``PHOBOS_WARNING_RATIO``, ``PHOBOS_DANGER_RATIO``),
    ``health_min_connects``: attempts in a window below which an edge is not
    classed (``PHOBOS_HEALTH_MIN_CONNECTS``; ``api.views.health``);
    ``warning_handshake_p95_ms``, ``warning_retransmit_ratio``: the health
    figures from which an edge is ``warning`` (``PHOBOS_WARNING_HANDSHAKE_P95_MS``,
    ``PHOBOS_WARNING_RETRANSMIT_RATIO``).
    """

    store: Store
    cache: ResultCache
    listener_slack: int = 600
    max_nodes: int = 150
    warning_ratio: float = 0.01
    danger_ratio: float = 0.05
    health_min_connects: int = 3
    warning_handshake_p95_ms: float = 500.0
    warning_retransmit_ratio: float = 0.02
    # A context lives for one request: what it read of a window's state is
    # good for the whole request, also with the result cache off.
    _states: dict[Window, reads.WindowState] = field(default_factory=dict, compare=False, repr=False)
    _alerts: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict, compare=False, repr=False)
    _rows: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, store: Store, cache: ResultCache, cfg: Mapping[str, Any]) -> ViewContext:
        return cls(store, cache, listener_slack=cfg["LISTENER_SLACK"], max_nodes=cfg["MAX_NODES"],
                   warning_ratio=cfg["WARNING_RATIO"], danger_ratio=cfg["DANGER_RATIO"],
                   health_min_connects=cfg["HEALTH_MIN_CONNECTS"],
                   warning_handshake_p95_ms=cfg["WARNING_HANDSHAKE_P95_MS"],
                   warning_retransmit_ratio=cfg["WARNING_RETRANSMIT_RATIO"])

    def cached(self, key: tuple, compute: Callable[[], Any], end: int | None = None) -> Any:
        """``compute()``, kept in the cache under ``key`` (``end``: the end of its window, if it has one)."""
        return self.cache.get((key[0], self.store.db, *key[1:]), compute, end)

    def gather(self, *calls: Callable[[], Any]) -> list[Any]:
        """The results of ``calls``, run at once (the first in this thread), in their order.

        For reads that do not depend on each other; the first exception
        raised is raised here once all have finished.  On one of the shared
        threads it runs them one after the other: those threads must never
        wait for each other.
        """
        if len(calls) < 2 or threading.current_thread().name.startswith(_READS_NAME):
            return [call() for call in calls]
        futures = [_READS.submit(call) for call in calls[1:]]
        try:
            first = calls[0]()
        finally:
            done = [(f, f.exception()) for f in futures]  # wait for all, whatever the first did
        for _, err in done:
            if err is not None:
                raise err
        return [first, *(f.result() for f, _ in done)]

    def prefetch(self, p: ViewParams, **options: Any) -> None:
        """Read the view's rows (``options`` as for ``rows``) and the alerts firing at its end at
        once, so that ``rows`` and ``alerting`` find them read."""
        self.gather(lambda: self.rows(p, **options), lambda: self.alerting(p.win.end))

    def state(self, win: Window) -> reads.WindowState:
        """How far the resolution stage has come in ``win`` and the catalog version (``reads.window_state``)."""
        state = self._states.get(win)
        if state is None:
            state = self._states[win] = self.cached(("state", win), lambda: reads.window_state(self.store, win),
                                                    win.end)
            _HAD_CALLS[(id(self.store), self.store.db)] = state.has_calls
        return state

    def rows(self, p: ViewParams, *, win: Window | None = None, **options: Any) -> list[dict[str, Any]]:
        """Resolved rows of ``win`` (default the view's) in the view's ``dc`` (``reads.graph_rows``)."""
        win = win or p.win
        key = ("rows", win, p.dc, tuple(sorted(options.items())))
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = self.cached(key, lambda: self._read_rows(win, p.dc, options), win.end)
        return rows

    def _read_rows(self, win: Window, dc: str | None, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows, read beside the window's state on the guess that the stage has resolved the
        whole window in the catalog last seen (what most views of the past find), and read again
        with the state when the guess was wrong."""
        def read(state: reads.WindowState) -> list[dict[str, Any]]:
            return reads.graph_rows(self.store, win, dc=dc, slack=self.listener_slack, state=state, **options)

        version = last_version(self.store)
        if win in self._states or version is None or win.end > time.time() - LIVE_EDGE_S:
            return read(self.state(win))
        guess = reads.WindowState.resolved(win, version, _HAD_CALLS.get((id(self.store), self.store.db), True))
        state, rows = self.gather(lambda: self.state(win), lambda: read(guess))
        return rows if state.reads_as(guess) else read(state)

    def catalog(self, win: Window | None = None) -> dict[str, Any]:
        """The current catalog by name (``catalog_maps``; read once per catalog version), the
        version taken from ``win``'s state when the view reads that window anyway."""
        return catalog_maps(self.store, self.state(win).catalog_version if win is not None else None)

    def alerting(self, at: int) -> dict[str, list[dict[str, Any]]]:
        """Alerts firing at ``at``, by service."""
        def compute() -> dict[str, list[dict[str, Any]]]:
            by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for alert in reads.firing_alerts(self.store, at):
                by_service[alert["service"]].append(alert)
            return by_service

        alerts = self._alerts.get(at)
        if alerts is None:
            alerts = self._alerts[at] = self.cached(("alerts", at), compute, at)
        return alerts

    def require_service(self, service: str, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """404 unless ``service`` is a node: one end of the view's ``rows`` (no
        query then), or anything the store knows by that name."""
        if any(service in (r["s_name"], r["d_name"]) for r in rows):
            return
        if not reads.service_exists(self.store, service):
            raise ApiError(404, f"no service named {service!r} in the catalog or the records")
