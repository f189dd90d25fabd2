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


def png_rgb(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium's screenshots are).

    Returns ``(width, height, rows)`` with each row as packed RGB bytes.  A
    small decoder keeps an image library out of the test dependencies.
    """
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
    return width, height, rows


def drawn_pixels(png: bytes, background: tuple[int, int, int] = (45, 45, 45), tolerance: int = 12) -> tuple[int, int]:
    """``(pixels unlike the background, distinct colours)`` of a screenshot."""
    _, _, rows = png_rgb(png)
    drawn, colours = 0, set()
    for row in rows:
        for k in range(0, len(row), 3):
            r, g, b = row[k], row[k + 1], row[k + 2]
            if abs(r - background[0]) + abs(g - background[1]) + abs(b - background[2]) > tolerance:
                drawn += 1
                colours.add((r >> 3, g >> 3, b >> 3))
    return drawn, len(colours)
