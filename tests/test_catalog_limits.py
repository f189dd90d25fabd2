"""The catalog's bounded costs: a depth limit on YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api.catalog import CatalogError, parse_catalog

ROOT = Path(__file__).resolve().parents[1]


# -- YAML depth ------------------------------------------------------------------

DEPTH = 5000


@pytest.mark.parametrize("text, where", [
    ("version: 1\nareas: " + "[" * DEPTH + "]" * DEPTH + "\n", "2:71"),
    ("version: 1\nareas: " + "{a: " * DEPTH + "}" * DEPTH + "\n", "2:257"),
    ("version: 1\nareas:\n" + "".join(" " * i + "-\n" for i in range(DEPTH)), "66:64"),
    ("version: 1\n" + "".join(" " * i + f"k{i}:\n" for i in range(DEPTH)), "65:64"),
], ids=["flow-lists", "flow-maps", "block-lists", "block-maps"])
def test_deep_yaml_is_a_clear_error(text, where):
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, source="deep.yaml")
    assert info.value.errors == [
        f"deep.yaml:{where}: the YAML is nested more than 64 levels deep here (a catalog needs "
        "at most 6); look for unclosed '[' or '{' or a run of '-' items, and flatten the "
        "structure"]


def test_depth_limit_leaves_room_for_real_catalogs():
    nested = "[" * 60 + "x" + "]" * 60
    with pytest.raises(CatalogError) as info:
        parse_catalog(f"version: 1\nareas: {nested}\n", source="c.yaml")
    assert "nested" not in "\n".join(info.value.errors)  # an ordinary content error instead


def test_catalog_check_reports_deep_yaml(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nareas: " + "[" * DEPTH + "]" * DEPTH + "\n")
    out = subprocess.run([sys.executable, "-m", "api.cli", "catalog", "check", str(deep)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{deep}:2:71: the YAML is nested more than 64 levels deep" in out.stderr
