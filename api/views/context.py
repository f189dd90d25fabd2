"""What every view reads from: the store, through the result cache, with the views' settings.

Every view of one window (areas, an area, impact, summary ...) starts from
the same resolved rows, and a UI asks for several of them per click, so the
rows, the firing alerts and the other reads go through the ``ResultCache``,
keyed by what they depend on and by the end of their window (ingest forgets
the windows its records fall into).  The catalog is read once per version
(``api.catalog.lookups``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from api.catalog.lookups import catalog_maps
from api.errors import ApiError
from api.resolution.tcp import Window
from api.storage import Store
from api.views import reads
from api.views.cache import ResultCache
from api.views.params import ViewParams

__all__ = ["ViewContext"]


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

    def state(self, win: Window) -> reads.WindowState:
        """How far the resolution stage has come in ``win`` and the catalog version (``reads.window_state``)."""
        state = self._states.get(win)
        if state is None:
            state = self._states[win] = self.cached(("state", win), lambda: reads.window_state(self.store, win),
                                                    win.end)
        return state

    def rows(self, p: ViewParams, *, win: Window | None = None, **options: Any) -> list[dict[str, Any]]:
        """Resolved rows of ``win`` (default the view's) in the view's ``dc`` (``reads.graph_rows``)."""
        win = win or p.win
        return self.cached(("rows", win, p.dc, tuple(sorted(options.items()))),
                           lambda: reads.graph_rows(self.store, win, dc=p.dc, slack=self.listener_slack,
                                                    state=self.state(win), **options),
                           win.end)

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

        return self.cached(("alerts", at), compute, at)

    def require_service(self, service: str, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """404 unless ``service`` is a node: one end of the view's ``rows`` (no
        query then), or anything the store knows by that name."""
        if any(service in (r["s_name"], r["d_name"]) for r in rows):
            return
        if not reads.service_exists(self.store, service):
            raise ApiError(404, f"no service named {service!r} in the catalog or the records")
