"""``phobos up`` as a real process: the simulated fleet in the UI, and (as root) a traced connection.

Each test starts ``python -m api.commands.up`` on a fresh data directory and a free
loopback port, waits for its URL line, checks what a user would see, then
stops it with SIGINT (Ctrl-C) and checks that it stopped cleanly and kept
the data.  Browser checks use Debian's Chromium (tests/browser.py).
"""

from __future__ import annotations

import argparse
import ctypes  # noqa: F401 - the helper processes below use it
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser  # noqa: E402
from conftest import require  # noqa: E402

from api.commands import up  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A ``phobos up`` process and its output, read by a thread."""

    def __init__(self, args: list[str], user: str | None = None, env: dict | None = None):
        self.port = free_port()
        cmd = [sys.executable, "-m", "api.commands.up", "--port", str(self.port), *args]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"phobos up exited ({self.proc.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed in {timeout} s:\n{self.output}")
            time.sleep(0.1)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def sql(self, query: str) -> list[list]:
        req = urllib.request.Request(self.url + "/api/v1/sql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())["rows"]

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a terminal sends it; returns the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"phobos up did not stop within {timeout} s of Ctrl-C:\n{self.output}")
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _unprivileged_user() -> str | None:
    """As root, the uid to run ``phobos up`` as an ordinary user - if that user can
    read this checkout and its virtualenv (a clone under /root may not be)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                            "-c", "import api.commands.up, api.app, chdb"], cwd=ROOT, capture_output=True, timeout=60)
    return "65534" if probe.returncode == 0 else None


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _has_data(u: Up) -> bool:
    tl = u.get("/api/v1/timeline")
    return bool(tl.get("range"))


def _open_ui(url: str, shot: str, renders: int = 1) -> dict:
    """Open the UI in Chromium, wait for ``renders`` rendered views; returns what it drew."""
    with browser.launch() as (_, context):
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        browser.wait_for(page, f"window.phobos && window.phobos.ready && (window.phobos.renders >= {renders}"
                               " || !document.getElementById('empty').hidden)", 60)
        time.sleep(1.0)
        (browser.ARTIFACTS / "ui").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(browser.ARTIFACTS / "ui" / f"{shot}.png"))
        level = page.evaluate("window.phobos.level")
        state = {"level": level, "errors": errors + page.evaluate("window.phobos.errors"),
                 "empty": page.locator("#empty").is_visible(), "view": page.evaluate("window.phobos.view")}
        page.close()
        return state


def _stored_rows(data: Path) -> int:
    from api.storage import open_store

    with open_store(f"chdb://{data}", role="pytest") as store:
        return store.query(f"SELECT count() FROM {store.db}.connections")[0][0]


# -- tests ---------------------------------------------------------------------------


def test_parser_defaults_and_environment(monkeypatch):
    parser = argparse.ArgumentParser()
    up.configure_parser(parser)
    args = parser.parse_args([])
    assert (args.data, args.port, args.host, args.simulate) == ("./data/phobos", 8080, "127.0.0.1", False)
    monkeypatch.setenv("PHOBOS_DATA", "/srv/phobos")
    monkeypatch.setenv("PHOBOS_PORT", "9000")
    parser = argparse.ArgumentParser()
    up.configure_parser(parser)
    args = parser.parse_args(["--simulate"])
    assert (args.data, args.port, args.simulate) == ("/srv/phobos", 9000, True)


def test_tracing_problems_name_what_is_missing(monkeypatch):
    from tracer import preflight

    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "effective_caps", lambda *a, **k: set())
    problems = up.tracing_problems()
    assert problems and any("root" in p or "CAP_BPF" in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.browser
def test_up_simulate_serves_a_working_ui_and_stops_cleanly(tmp_path, chromium):
    """A fresh data directory, no privileges: the UI shows the simulated fleet; Ctrl-C keeps the data."""
    from api.routes.ui import VIZCERAL_JS

    require(VIZCERAL_JS.is_file(), "Vizceral is not installed: npm ci --prefix static")
    # Like a user's first try: no root, so tracing is off and says why.
    user = _unprivileged_user()
    if user:
        # pytest's tmp_path is private to root; this directory is not.
        tmp_path = Path(tempfile.mkdtemp(prefix="phobos-up-"))
        os.chmod(tmp_path, 0o777)
    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    extra = ["--no-trace"] if os.geteuid() == 0 and not user else []
    u = Up(["--data", str(data), "--simulate", "--sim-history", "-30m", "--sim-services", "40",
            "--sim-areas", "6", "--sim-instances", "150", *extra], user=user, env={"HOME": str(home)})
    try:
        u.wait_for("Phobos is up: open http://127.0.0.1:")
        assert f"open {u.url}/" in u.output
        if os.geteuid() != 0 or user:
            assert "tracing this host is off" in u.output
        _wait(lambda: _has_data(u), 60, "the simulated backfill")
        state = _open_ui(u.url + "/", "up-simulate")
        assert not state["empty"] and state["errors"] == [], state
        assert state["view"] == []
        assert len(state["level"]["nodes"]) >= 6 and state["level"]["connections"], state["level"]
        area = sorted(n for n in state["level"]["nodes"] if n != "INTERNET")[0]
        state = _open_ui(u.url + "/?area=" + urllib.parse.quote(area), "up-simulate-area")
        assert state["view"] == [area] and len(state["level"]["nodes"]) > 1 and state["errors"] == []
        # Live mode refreshes by itself (every 10 s).
        state = _open_ui(u.url + "/?live=1", "up-simulate-live", renders=2)
        assert state["errors"] == [] and state["level"]["connections"]
    finally:
        if u.proc.poll() is None:
            code = u.interrupt()
        else:
            code = u.proc.returncode
        u.kill()
    assert code == 0, u.output
    assert "data kept" in u.output
    assert _stored_rows(data) > 0
    if user:
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.browser
def test_up_unprivileged_explains_tracing_and_the_page_how_to_get_data(tmp_path, chromium):
    """No root, no data: the terminal says why tracing is off and offers --simulate; the page says how to get data."""
    user, env = _unprivileged_user(), {}
    if user:
        tmp_path = Path(tempfile.mkdtemp(prefix="phobos-up-"))
        os.chmod(tmp_path, 0o777)
        env = {"HOME": str(tmp_path)}
    extra = ["--no-trace"] if os.geteuid() == 0 and not user else []
    u = Up(["--data", str(tmp_path / "d"), *extra], user=user, env=env)
    try:
        u.wait_for("Phobos is up")
        if user or os.geteuid() != 0:
            assert "tracing this host is off" in u.output and "phobos up --simulate" in u.output, u.output
        with urllib.request.urlopen(u.url + "/", timeout=30) as response:
            assert b"No data yet" in response.read()
        state = _open_ui(u.url + "/", "up-empty")
        assert state["empty"] and state["errors"] == []
    finally:
        code = u.interrupt() if u.proc.poll() is None else u.proc.returncode
        u.kill()
        if user:
            shutil.rmtree(tmp_path, ignore_errors=True)
    assert code == 0, u.output


SERVER = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"phb-up-server", 0, 0, 0)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
s.settimeout(0.5)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        conn, _ = s.accept()
        held.append(conn)
    except socket.timeout:
        pass
"""

CLIENT = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"phb-up-client", 0, 0, 0)
held = []
end = time.time() + float(sys.argv[2])
while time.time() < end:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    held.append(c)
    if len(held) > 3:
        held.pop(0).close()
    time.sleep(0.5)
"""


@pytest.mark.slow
@pytest.mark.bpf
@pytest.mark.browser
def test_up_as_root_traces_a_real_connection_into_the_ui(tmp_path, bpf_host, chromium):
    problems = up.tracing_problems()
    require(not problems, "; ".join(problems))
    data = tmp_path / "data"
    u = Up(["--data", str(data), "--interval", "1"])
    server = client = None
    try:
        u.wait_for("Phobos is up")
        assert "tracing this host every 1 s" in u.output, u.output
        tracer_pid = int(u.output.split("tracer pid ")[1].split(")")[0])
        u.wait_for("tracing (mode", timeout=120)  # the tracer compiled and attached its program
        server = subprocess.Popen([sys.executable, "-c", SERVER, "60"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), "60"])
        query = (f"SELECT service, direction, sum(connects) + sum(accepts) FROM phobos.connections "
                 f"WHERE remote_port = {port} OR local_port = {port} GROUP BY service, direction")
        rows = _wait(lambda: [r for r in u.sql(query) if r[2] > 0], 60, "the traced connection in the store")
        assert "phb-up-client" in {r[0] for r in rows}, rows
        # The UI's view of the client service draws its edge to the server.  Views end
        # at a whole minute (a partly written minute is not shown), so ask for the end
        # of the minute that holds the newest record rather than wait for it to pass.
        newest = u.sql(f"SELECT toUnixTimestamp(max(ts)) FROM phobos.connections WHERE remote_port = {port}")[0][0]
        at = int(newest) // 60 * 60 + 60
        state = _wait(lambda: (lambda s: s if "phb-up-server" in s["level"]["nodes"] else None)(
            _open_ui(u.url + f"/?service=phb-up-client&at={at}", "up-traced")), 90, "the edge in the UI", 2)
        assert state["view"][-1] == "phb-up-client" and state["errors"] == [], state
        assert any("phb-up-server" in c for c in state["level"]["connections"]), state["level"]
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
        code = u.interrupt() if u.proc.poll() is None else u.proc.returncode
        u.kill()
    assert code == 0, u.output
    assert "data kept" in u.output
    # Ctrl-C stopped the tracer as well.
    assert not Path(f"/proc/{tracer_pid}").exists() or "zombie" in Path(f"/proc/{tracer_pid}/status").read_text()
    assert _stored_rows(data) > 0
