"""The server-mode analysts' user (sql/server/analyst.sql), checked statically with ClickHouse's parser.

No ClickHouse server runs here, so the statements are parsed by chDB (the same
parser) and their meaning is read from the canonical form: the user may
SELECT and SHOW in the Phobos database only, with CONST read-only limits.
"""

from __future__ import annotations

import re

import pytest

from api.storage import StoreError
from api.storage.migrations import analyst_user_statements


def canonical(store, statement: str) -> str:
    return store.query("SELECT formatQuerySingleLine({q:String})", {"q": statement})[0][0]


@pytest.mark.parametrize("cluster", [None, "main"])
def test_statements_parse_and_grant_only_reads_of_phobos(store, cluster):
    statements = [canonical(store, s) for s in analyst_user_statements("phobos", "phobos_analyst", "pw'x", cluster)]
    kinds = [s.split(" ", 2)[:2] for s in statements]
    assert kinds == [["CREATE", "SETTINGS"], ["CREATE", "USER"], ["REVOKE", "ON" if cluster else "ALL"],
                     ["GRANT", "ON" if cluster else "SELECT,"]]
    profile, user, revoke, grant = statements
    for setting in ("readonly = 1", "max_execution_time", "max_memory_usage", "max_result_rows", "max_threads = 1"):
        assert re.search(rf"{setting}[^,]* CONST", profile), setting
    assert "DEFAULT DATABASE phobos" in user and "sha256_password BY 'pw\\'x'" in user
    assert revoke.endswith("ALL ON *.* FROM phobos_analyst")
    assert grant.endswith("SELECT, SHOW TABLES, SHOW COLUMNS ON phobos.* TO phobos_analyst")
    granted = re.findall(r"\bGRANT\b.*", " ".join(statements))
    assert len(granted) == 1 and not re.search(r"\b(FILE|URL|S3|REMOTE|INSERT|ALTER|CREATE|SOURCES)\b", granted[0])
    if cluster:
        assert all("ON CLUSTER main" in s for s in statements)


def test_bad_names_and_a_missing_password_are_refused():
    with pytest.raises(StoreError, match="password"):
        analyst_user_statements("phobos", "phobos_analyst", "")
    with pytest.raises(StoreError, match="identifier"):
        analyst_user_statements("phobos", "x; DROP USER y", "pw")
