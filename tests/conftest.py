"""Shared fixtures.

chDB runs one data directory per process, so every test module shares one
directory (opened for the module's lifetime) and each test gets a database
of its own in it: tests stay isolated without reopening the engine.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI") == "true"


def require(available: bool, reason: str) -> None:
    """Skip a test whose component is missing - but fail it in CI, where a
    skip would hide a gap in what was tested."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory):
    from api.storage import open_store

    path = tmp_path_factory.mktemp("chdb")
    anchor = open_store(f"chdb://{path}?database=anchor", role="pytest")
    yield path
    anchor.close()


@pytest.fixture
def store(chdb_dir, request):
    """A migrated store in a fresh database of the module's chDB directory."""
    from api.storage import open_store

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    s = open_store(f"chdb://{chdb_dir}?database={name}", role="pytest")
    s.migrate()
    yield s
    s.close()
