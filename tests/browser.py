"""Headless Chromium for the UI tests and benchmarks (no tests here).

Debian's ``chromium`` is driven through Python Playwright's CDP client
(``playwright`` from PyPI, pinned in setup.cfg's test extras) with
``executable_path`` pointing at the system browser - Playwright's own browser
downloads are never used (``playwright install`` is not needed).

WebGL runs on SwiftShader (ANGLE's CPU renderer): ``--use-gl=angle
--use-angle=swiftshader --enable-unsafe-swiftshader``.  ``--disable-gpu``
is *not* passed, it turns WebGL off.  The other flags keep the browser from
reaching the network (component updates, sync, first-run pages) and each
run gets a fresh profile directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["CHROMIUM", "FLAGS", "available", "why_unavailable", "launch", "ARTIFACTS"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PHOBOS_ARTIFACTS", ROOT / "artifacts"))

CHROMIUM = os.environ.get("PHOBOS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    "--no-proxy-server",
]


def why_unavailable() -> str | None:
    """None when a browser can be launched, else what is missing."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (pip install -e '.[test]')"
    return None


def available() -> bool:
    return why_unavailable() is None


@contextlib.contextmanager
def launch(width: int = 1280, height: int = 800) -> Iterator[tuple[object, object]]:
    """Yield ``(browser, context)``: a fresh headless Chromium and a page context."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="phobos-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": width, "height": height}, device_scale_factor=1,
                ignore_default_args=["--disable-gpu", "--headless"], timeout=60000,
            )
            try:
                yield context.browser, context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(page, expression: str, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``expression`` in the page until it is truthy; returns its value.

    ``page.wait_for_function`` evaluates its predicate with ``eval``, which
    the UI's Content-Security-Policy forbids; ``page.evaluate`` is not
    subject to it.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression!r} still false after {timeout} s")
        time.sleep(interval)
