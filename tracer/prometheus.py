"""Prometheus text exposition (format 0.0.4), and a small server for processes without a web app.

What it is: ``Exposition`` writes families (``# HELP``, ``# TYPE``, one line
per sample, label values escaped) and ``MetricsServer`` serves a render
function on ``/metrics`` - and a health function on ``/healthz`` - from a
daemon thread.  The tracer (``tracer/metrics.py``), the API's ``/metrics``
(``api/routes/health.py``) and ``phobos ingest --metrics-port``
(``api/commands/ingest.py``) all write through it; it lives on the tracer
side because the tracer never imports ``api``.

Cost: rendering is string joins over the samples a caller hands in; the
server is one thread blocked in accept() plus one per scrape.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping

__all__ = ["CONTENT_TYPE", "Exposition", "MetricsServer", "label_value"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A sample: its labels (or none) and its value (a number, or text already formatted).
Sample = tuple[Mapping[str, Any] | None, Any]


def label_value(value: object) -> str:
    """``value`` escaped for a label: backslash, double quote and newline."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


class Exposition:
    """The lines of one scrape, family by family.

    Examples
    --------
    >>> out = Exposition()
    >>> out.metric("jobs_total", "counter", "Jobs done.", [({"queue": 'a"b'}, 3)])
    >>> print(out.text(), end="")
    # HELP jobs_total Jobs done.
    # TYPE jobs_total counter
    jobs_total{queue="a\\"b"} 3
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: Iterable[Sample] = ()) -> None:
        """One family: ``kind`` is ``counter`` or ``gauge``; a family may have no samples yet."""
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{self._labels(labels)} {_value(value)}")

    def extend(self, other: "Exposition") -> None:
        self.lines.extend(other.lines)

    @staticmethod
    def _labels(labels: Mapping[str, Any] | None) -> str:
        if not labels:
            return ""
        return "{" + ",".join(f'{key}="{label_value(value)}"' for key, value in labels.items()) + "}"

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class MetricsServer:
    """Serve ``render()`` on ``/metrics`` of (addr, port) from a daemon thread; port 0 picks a free one.

    With ``healthy``, ``/healthz`` answers 200 ``ok`` while it returns true
    and 503 ``stalled`` otherwise; any other path is a 404.
    """

    def __init__(self, render: Callable[[], str], addr: str = "127.0.0.1", port: int = 0,
                 healthy: Callable[[], bool] | None = None, name: str = "phobos-metrics") -> None:

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    code, body, ctype = 200, render(), CONTENT_TYPE
                elif path == "/healthz" and healthy is not None:
                    ok = healthy()
                    code, body, ctype = (200 if ok else 503), ("ok\n" if ok else "stalled\n"), "text/plain"
                else:
                    code, body, ctype = 404, "not found\n", "text/plain"
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
