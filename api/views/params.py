"""The parameters every view takes, as one typed value.

``api.routes.common.view_params`` parses them from the query string (``at``,
``window``, ``metric``, ``dc``) and refuses bad ones with a 400; a view gets
them checked, with the ``Window`` they mean already worked out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from api.resolution.tcp import Window
from tracer.records import format_ts

__all__ = ["ViewParams", "LIVE_S"]

#: A view whose ``at`` is this close to now shows the present: the minute
#: being written is included, up to ``at`` (``Window.at(live=True)``).
LIVE_S = 60


@dataclass(frozen=True)
class ViewParams:
    """What a view shows: the window ending at ``at``, the edge volume ``metric``, one ``dc`` or all.

    ``at`` and ``window`` are epoch seconds and seconds; ``win`` is the
    window they mean (snapped to the rollup's buckets); ``metric`` is a key
    of ``api.views.graph.METRICS``.
    """

    at: int
    window: int
    metric: str
    dc: str | None
    win: Window

    @classmethod
    def of(cls, at: int, window: int, metric: str = "open", dc: str | None = None,
           now: float | None = None) -> ViewParams:
        """The parameters of a view of ``window`` seconds ending at ``at``."""
        live = at >= (time.time() if now is None else now) - LIVE_S
        return cls(at, window, metric, dc, Window.at(at, window, live=live))

    def ending_at(self, at: int) -> ViewParams:
        """The same view ending at ``at`` instead (whole buckets: never live)."""
        return replace(self, at=at, win=Window.at(at, self.window))

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What every view's ``metadata`` says about its parameters, then ``extra``."""
        return {"at": format_ts(self.win.end), "from": format_ts(self.win.start), "window": self.win.seconds,
                "metric": self.metric, "dc": self.dc, **extra}
