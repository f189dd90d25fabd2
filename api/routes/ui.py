"""The web UI: ``/`` serves ``static/index.html``, ``/ui/...`` its scripts and styles.

The page's own files come from ``static/``; Vizceral comes from
``static/node_modules`` (installed at set-up with ``npm ci --prefix static``,
never committed) and is served as ``/ui/vendor/vizceral.min.js``.  When it
is missing the page still loads and says how to install it.

Only files the page needs are reachable: ``package.json``, the rest of
``node_modules`` and anything outside ``static/`` are not served.  Every
response carries a Content-Security-Policy that allows scripts from this
origin only, so a name that slipped into the DOM as HTML could still not run
script (the page never inserts data as HTML in the first place).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_file

from api.errors import ApiError

__all__ = ["bp", "STATIC_DIR", "VIZCERAL_JS"]

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
VIZCERAL_JS = STATIC_DIR / "node_modules" / "vizceral" / "dist" / "vizceral.min.js"

#: Page files by URL name -> content type.  Kept explicit: nothing else in static/ is served.
_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "screenshot.png": "image/png",
}

# Vizceral lays graphs out in a web worker built from a blob: URL, and three.js
# draws text labels through canvas data: images.
CSP = ("default-src 'self'; script-src 'self'; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")

bp = Blueprint("ui", __name__)


def _secure(response: Response, cache: str) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = cache
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def index():
    return _secure(send_file(STATIC_DIR / "index.html", mimetype="text/html", max_age=0), "no-cache")


@bp.get("/ui/<name>")
def page_file(name: str):
    mimetype = _FILES.get(name)
    path = STATIC_DIR / name
    if mimetype is None or not path.is_file():
        raise ApiError(404, f"no UI file named {name!r}")
    return _secure(send_file(path, mimetype=mimetype, max_age=0), "no-cache")


@bp.get("/ui/vendor/vizceral.min.js")
def vizceral():
    if not VIZCERAL_JS.is_file():
        # The page checks for window.Vizceral and explains; a script that
        # sets nothing keeps the console free of a MIME-type error.
        body = ("/* Vizceral is not installed: run `npm ci --prefix static` in the Phobos "
                "checkout (see static/README.md) */\n")
        return _secure(Response(body, mimetype="text/javascript"), "no-store")
    return _secure(send_file(VIZCERAL_JS, mimetype="text/javascript", max_age=86400), "public, max-age=86400")

