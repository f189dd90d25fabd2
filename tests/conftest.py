"""Shared fixtures, the skip rule and the marks that make the fast lane.

Lanes (marks declared in setup.cfg)::

    .venv/bin/python -m pytest                                    # everything (CI)
    .venv/bin/python -m pytest -m "not bpf and not kafka and not browser and not slow and not netns"

The second is the fast lane: no root, no Kafka broker, no browser, no network
namespaces, nothing that takes more than a few seconds.  ``bpf`` tests need
root and a kernel that loads BPF programs, ``kafka`` ones the broker of
tests/kafka.py, ``browser`` ones Debian's Chromium, ``netns`` ones root,
iproute2 and nftables.

A missing component goes through :func:`require`: the test is skipped with the
reason locally and fails when ``CI=true``, where a skip would hide a gap.  A
test reaches a component through its fixture (``bpf_host``, ``kafka_broker``,
``chromium``); collection refuses a test that uses one without the matching
mark, so the fast lane cannot pick it up by accident.

chDB runs one data directory per process, so every test module shares one
directory (opened for the module's lifetime) and each test gets a database
of its own in it: tests stay isolated without reopening the engine.  That
database is a copy of one the module migrated once (tests/schema_copy.py):
migrating each test's database anew took most of the fast lane's set-up time.
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

#: The fixture that gives a test a component -> the mark the test must carry.
COMPONENT_MARKS = {"bpf_host": "bpf", "kafka_broker": "kafka", "chromium": "browser",
                   "netns_host": "netns"}


def require(available: bool, reason: str) -> None:
    """Skip a test whose component is missing - but fail it in CI, where a
    skip would hide a gap in what was tested."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    """Refuse the run when a test uses a component's fixture without its mark."""
    unmarked = [f"{item.nodeid} uses {fixture} but is not marked {mark} "
                f"(add pytestmark = pytest.mark.{mark} to its module, or @pytest.mark.{mark})"
                for item in items
                for fixture, mark in COMPONENT_MARKS.items()
                if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None]
    if unmarked:
        raise pytest.UsageError("tests without the mark of the component they need:\n  " + "\n  ".join(unmarked))


@pytest.fixture(scope="session")
def bpf_host() -> None:
    """Root and what the tracer needs to load its program here (BCC, headers, tracefs, BTF)."""
    require(os.geteuid() == 0, "BPF tests need root")
    from tracer import preflight

    problems = preflight.run_checks()
    require(not problems, "; ".join(str(p) for p in problems))


@pytest.fixture(scope="session")
def netns_host() -> None:
    """Root, iproute2, nftables and a readable connection-tracking table (ctnetlink)."""
    import netns

    from tracer import conntrack

    for ok, reason in (netns.available(), netns.nft_available(), conntrack.available()):
        require(ok, reason)


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's Chromium and Playwright's client, driven by tests/browser.py."""
    import browser

    require(browser.available(), browser.why_unavailable() or "")


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory):
    from api.storage import open_store

    path = tmp_path_factory.mktemp("chdb")
    anchor = open_store(f"chdb://{path}?database=anchor", role="pytest")
    yield path
    anchor.close()


@pytest.fixture(scope="module")
def store_template(chdb_dir):
    """The module's migrated database that each test's ``store`` copies; tests leave it alone."""
    from api.storage import open_store
    from schema_copy import TEMPLATE

    s = open_store(f"chdb://{chdb_dir}?database={TEMPLATE}", role="pytest")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def store(chdb_dir, store_template, request):
    """A migrated store in a fresh database of the module's chDB directory."""
    from api.storage import open_store
    from schema_copy import copy_database

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    s = open_store(f"chdb://{chdb_dir}?database={name}", role="pytest")
    copy_database(s, store_template.db, name)
    yield s
    s.close()
