"""Serving: ``phobos serve`` (development server, threads) and gunicorn, as real processes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from api.commands.serve import configure_parser

# Servers (Werkzeug, gunicorn) start in processes of their own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise AssertionError("server did not become ready")


def post(port: int, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_parser_defaults():
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--store", "chdb:///x", "--port", "9000"])
    assert (args.store, args.host, args.port, args.migrate) == ("chdb:///x", "127.0.0.1", 9000, False)


def run_server(cmd: list[str], env: dict, port: int):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_ready(port, proc) == {"status": "ready"}
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_phobos_serve_development_server(tmp_path):
    from factories import connection

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOBOS_")}
    cmd = [sys.executable, "-m", "api.commands.serve", "--store", f"chdb://{tmp_path}/db", "--port", str(port), "--migrate"]
    for _ in run_server(cmd, env, port):
        # bound to loopback without a token: writes from this machine are allowed
        status, body = post(port, "/api/v1/ingest", {"batch_id": "s1", "connections": [connection()]})
        assert status == 200 and body["connections"]["accepted"] == 1
        status, body = post(port, "/api/v1/sql", {"query": "SELECT count() FROM phobos.connections"})
        assert status == 200 and body["rows"] == [[1]]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()


def test_serve_refuses_a_store_without_schema(tmp_path):
    result = subprocess.run([sys.executable, "-m", "api.commands.serve", "--store", f"chdb://{tmp_path}/empty",
                             "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "phobos migrate" in result.stderr


def test_gunicorn_one_worker_with_threads(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        gunicorn = Path(shutil.which("gunicorn") or "missing")
    from conftest import require

    require(gunicorn.exists(), "gunicorn is not installed")
    from api.storage import open_store

    store = open_store(f"chdb://{tmp_path}/db", role="pytest")
    store.migrate()
    store.close()
    port = free_port()
    env = dict(os.environ, PHOBOS_STORE=f"chdb://{tmp_path}/db", PHOBOS_TOKEN="tok")
    cmd = [str(gunicorn), "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}", "api.app:create_app()"]
    for _ in run_server(cmd, env, port):
        status, body = post(port, "/api/v1/ingest", {"connections": []})
        assert status == 401 and body["code"] == 401
        status, body = post(port, "/api/v1/ingest", {"connections": []}, token="tok")
        assert status == 200
