"""Where the tracer's records go: stdout, the API's HTTP ingest, or a plug-in.

What it holds: a ``Sink`` base class, one subclass per destination, and
``make_sink(url)`` which picks the class by URL scheme from a registry that
other modules extend (``register_sink("kafka", KafkaSink)``).  This module
knows none of them, so imports run one way: ``tracer/kafka_sink.py``
registers ``kafka://`` when imported, and the agent imports it.

- ``stdout`` (default): one JSON object per line (JSONEachRow), connection
  records then listener records; a listener record is the one without a
  ``direction`` field.
- ``http://HOST:PORT`` / ``https://``: POST of
  ``{"batch_id", "connections", "listeners"}`` to ``{url}/api/v1/ingest``,
  ``Authorization: Bearer $PHOBOS_TOKEN`` when set.  ``batch_id`` is
  ``<host>-<boot id>-<seq>`` so the receiver can drop a replayed batch.

Cost and caveats: the HTTP sink keeps unsent records in memory, bounded by
``max_queue`` records; when full, the oldest are dropped and counted
(``dropped``).  Retries back off exponentially (0.5 s doubling to 30 s)
inside one ``send`` call only up to ``retry_budget_s`` so a dead API cannot
stall the drain loop; what is left waits for the next interval.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Deque, TextIO

__all__ = ["Sink", "StdoutSink", "HttpSink", "register_sink", "sink_factory", "make_sink", "SinkError", "boot_id"]

log = logging.getLogger("phobos.tracer.sinks")


class SinkError(RuntimeError):
    """A sink URL that cannot be used."""


class Sink:
    """Base class: ``send`` one interval's records; count what was lost.

    Subclasses set ``errors`` (failed deliveries), ``dropped`` (records
    thrown away) and report ``queue_len`` (records waiting).
    """

    scheme = ""

    def __init__(self) -> None:
        self.errors = 0
        self.dropped = 0
        self.sent = 0

    @property
    def queue_len(self) -> int:
        return 0

    def send(self, connections: list[dict[str, Any]], listeners: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def flush(self, timeout_s: float = 5.0) -> None:
        """Try to deliver what is queued before exit."""

    def close(self) -> None:
        pass


class StdoutSink(Sink):
    scheme = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def send(self, connections, listeners) -> None:
        lines = [json.dumps(r, separators=(",", ":")) for r in (*connections, *listeners)]
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self.sent += len(lines)
        except (OSError, ValueError):  # closed pipe
            self.errors += 1
            self.dropped += len(lines)


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "noboot"


class HttpSink(Sink):
    """POST batches to the API's ingest endpoint.

    Parameters
    ----------
    url : ``http://host:port`` (a trailing ``/api/v1/ingest`` is accepted).
    host : reporting host name, part of ``batch_id``.
    token : bearer token, or None.
    max_queue : most records kept while the API is unreachable.
    retry_budget_s : longest time one ``send`` spends retrying.
    """

    scheme = "http"

    def __init__(self, url: str, host: str = "", token: str | None = None, max_queue: int = 100_000,
                 retry_budget_s: float = 5.0, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        base = url.rstrip("/")
        if base.endswith("/api/v1/ingest"):
            base = base[: -len("/api/v1/ingest")]
        self.endpoint = base + "/api/v1/ingest"
        self.host = host
        self.token = token
        self.max_queue = max_queue
        self.retry_budget_s = retry_budget_s
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._boot = boot_id()
        self._seq = 0
        # (batch_id, kind, record); batch ids are kept so a retried batch keeps its id.
        self._queue: Deque[tuple[str, str, dict[str, Any]]] = collections.deque()
        self.backoff_s = 0.5

    @property
    def queue_len(self) -> int:
        return len(self._queue)

    def _enqueue(self, batch_id: str, kind: str, recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            self._queue.append((batch_id, kind, rec))
        excess = len(self._queue) - self.max_queue
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.dropped += excess
            log.warning("http sink queue full: dropped %d oldest records", excess)

    def _post(self, batch_id: str, conns: list, lis: list) -> None:
        body = json.dumps({"batch_id": batch_id, "connections": conns, "listeners": lis},
                          separators=(",", ":")).encode()
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            resp.read()

    def send(self, connections, listeners) -> None:
        if connections or listeners:
            self._seq += 1
            batch_id = f"{self.host}-{self._boot}-{self._seq}"
            self._enqueue(batch_id, "connections", connections)
            self._enqueue(batch_id, "listeners", listeners)
        self._deliver(self.retry_budget_s)

    def _deliver(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        while self._queue:
            batch_id = self._queue[0][0]
            items = []
            for item in self._queue:
                if item[0] != batch_id:
                    break
                items.append(item)
            conns = [r for _, k, r in items if k == "connections"]
            lis = [r for _, k, r in items if k == "listeners"]
            try:
                self._post(batch_id, conns, lis)
            except urllib.error.HTTPError as err:
                self.errors += 1
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    # The API refuses this batch: retrying cannot help.
                    log.error("ingest refused batch %s: HTTP %s; dropping %d records",
                              batch_id, err.code, len(items))
                    for _ in items:
                        self._queue.popleft()
                    self.dropped += len(items)
                    continue
                log.warning("ingest failed (HTTP %s), retrying", err.code)
            except (urllib.error.URLError, OSError) as err:
                self.errors += 1
                log.warning("ingest unreachable (%s), retrying", getattr(err, "reason", err))
            else:
                for _ in items:
                    self._queue.popleft()
                self.sent += len(items)
                self.backoff_s = 0.5
                continue
            if time.monotonic() + self.backoff_s > deadline:
                return
            self._sleep(self.backoff_s)
            self.backoff_s = min(self.backoff_s * 2, 30.0)

    def flush(self, timeout_s: float = 5.0) -> None:
        self._deliver(timeout_s)


_REGISTRY: dict[str, Callable[..., Sink]] = {}


def register_sink(scheme: str, factory: Callable[..., Sink]) -> None:
    """Make ``make_sink`` build ``factory(url, **options)`` for URLs of ``scheme``."""
    _REGISTRY[scheme] = factory


register_sink("stdout", lambda url, **opts: StdoutSink(opts.get("stream")))
register_sink("http", lambda url, **opts: HttpSink(url, host=opts.get("host", ""), token=opts.get("token"),
                                                   max_queue=opts.get("max_queue", 100_000)))
register_sink("https", _REGISTRY["http"])


def sink_factory(url: str) -> Callable[..., Sink]:
    """The factory for ``url``'s scheme, without opening anything.

    Raises
    ------
    SinkError
        If no sink handles the scheme.
    """
    scheme = "stdout" if url in ("", "-", "stdout") else url.split("://", 1)[0].lower() if "://" in url else ""
    factory = _REGISTRY.get(scheme)
    if factory is None:
        known = ", ".join(sorted(s + ("" if s == "stdout" else "://") for s in _REGISTRY))
        raise SinkError(f"unknown sink {url!r}; use one of: {known}")
    return factory


def make_sink(url: str, **options: Any) -> Sink:
    """A sink for ``url``: ``stdout``, ``http://…``, or a registered scheme like ``kafka://…``."""
    return sink_factory(url)(url, **options)
