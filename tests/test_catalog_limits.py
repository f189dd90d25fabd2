"""The catalog's bounded costs: RE2 regexes (linear-time matching, Python-only
syntax refused with its position) and a depth limit on YAML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tracer.catalog import CatalogError, Match, load_catalog, parse_catalog
from tracer.attribution import Attributor

ROOT = Path(__file__).resolve().parents[1]

# The attack: with Python's re this search takes about 17 s and holds
# the GIL, so the tracer stops reporting and its /healthz stops answering.
EVIL_PATTERN = "(a+)+$"
EVIL_CMDLINE = "a" * 27 + "!"
# Far below 17 s, far above what RE2 needs (about 0.1 ms here).
BOUND_S = 0.5


def catalog_with(rules: str, source: str = "cat.yaml"):
    text = textwrap.dedent("""\
        version: 1
        areas: [{name: a}]
        services:
          - name: evil
            area: a
            match:
        """) + textwrap.indent(textwrap.dedent(rules), "      ")
    return parse_catalog(text, source=source)


def errors_of(rules: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        catalog_with(rules)
    return info.value.errors


# -- regexes: bounded time -------------------------------------------------------

def test_catastrophic_pattern_is_matched_in_bounded_time():
    cat = catalog_with(f"cmdline: ['{EVIL_PATTERN}']\nexe: ['{EVIL_PATTERN}']\n")
    start = time.perf_counter()
    assert cat.match_service({"comm": "x", "exe": EVIL_CMDLINE, "cmdline": EVIL_CMDLINE}) is None
    assert time.perf_counter() - start < BOUND_S
    # Linear, not just lucky on 28 characters: a million takes milliseconds.
    start = time.perf_counter()
    assert cat.match_service({"cmdline": "a" * 1_000_000 + "!"}) is None
    assert time.perf_counter() - start < BOUND_S
    # The pattern still means what it says.
    assert cat.match_service({"cmdline": "x aaaa"}) == "evil"


def test_tracer_attribution_of_a_hostile_cmdline_is_bounded(tmp_path):
    pid = tmp_path / "4242"
    pid.mkdir()
    (pid / "stat").write_text("4242 (aaaa) S " + " ".join(["0"] * 19) + " 777 0\n")
    (pid / "comm").write_text("aaaa\n")
    (pid / "cmdline").write_bytes(EVIL_CMDLINE.encode() + b"\0")
    (pid / "cgroup").write_text("0::/user.slice/user-1000.slice/session-1.scope\n")
    cat = catalog_with(f"cmdline: ['{EVIL_PATTERN}']\n")
    attributor = Attributor(str(tmp_path), catalog=cat, host="h")
    start = time.perf_counter()
    info = attributor.attribute(4242)
    assert time.perf_counter() - start < BOUND_S
    assert info["cmdline"] == EVIL_CMDLINE and info["service"] == "aaaa"


def test_search_semantics_are_unchanged():
    cat = catalog_with("""\
        exe: ['^/opt/app/', 'bin/tool$']
        cmdline: ['-m worker\\b', '(?i)KAFKA\\.kafka']
        """)
    m = cat.match_service
    assert m({"exe": "/opt/app/bin/x"}) == "evil"          # anchored at the start
    assert m({"exe": "/srv/opt/app/bin/x"}) is None
    assert m({"exe": "/usr/bin/tool"}) == "evil"          # searched, anchored at the end
    assert m({"exe": "/usr/bin/tool2"}) is None
    assert m({"cmdline": ["python3", "-m", "worker", "--x"]}) == "evil"
    assert m({"cmdline": "python3 -m workers"}) is None
    assert m({"cmdline": "java kafka.Kafka conf"}) == "evil"
    assert m({"cmdline": "ünïcode -m worker"}) == "evil"
    # os.readlink() carries undecodable bytes as lone surrogates.
    assert m({"exe": "/opt/app/\udcff"}) == "evil"
    assert m({"exe": "/x/\udcffbin/tool"}) == "evil"


# -- regexes: what RE2 lacks is refused at check time ----------------------------

@pytest.mark.parametrize("pattern, hint", [
    (r"(a)\1", "RE2 has no backreferences"),
    (r"(?P<x>a)(?P=x)", "RE2 has no backreferences"),
    (r"java(?= )", "RE2 has no lookahead or lookbehind"),
    (r"(?<!x)java", "RE2 has no lookahead or lookbehind"),
    (r"java\Z", r"RE2 writes end of text as \z, not \Z"),
    (r"(?>a+)b", "no atomic groups or possessive quantifiers"),
    (r"a++b", "no atomic groups or possessive quantifiers"),
    (r"(?x) java \s", "RE2 has only the flags i, m, s and U"),
    (r"a{2000}", "RE2 allows counted repetition up to {1000}"),
])
def test_python_only_syntax_is_refused_with_position(pattern, hint):
    errors = errors_of(f"cmdline: [ok, '{pattern}']\n")
    assert len(errors) == 1, errors
    msg = errors[0]
    assert msg.startswith(f"cat.yaml:7:21: 'cmdline' pattern {pattern!r} in the match rules of "
                          "service 'evil' is not a valid regular expression in RE2 syntax ("), msg
    assert hint in msg, msg
    assert "Python's re accepts it, but catalog regexes must be RE2 syntax" in msg
    assert "https://github.com/google/re2/wiki/Syntax" in msg


def test_invalid_pattern_everywhere_still_says_how_to_fix_it():
    msg = errors_of("exe: ['(']\n")[0]
    assert msg.startswith("cat.yaml:7:13: 'exe' pattern '(' in the match rules of service "
                          "'evil' is not a valid regular expression (missing ): (): escape "
                          "special characters with a backslash"), msg


def test_oversized_pattern_is_refused():
    msg = errors_of("cmdline: ['.{1000}.{1000}']\n")[0]
    assert msg.startswith("cat.yaml:7:17: 'cmdline' pattern '.{1000}.{1000}' in the match rules "
                          "of service 'evil' is too large: it compiles to "), msg
    assert "more than 10000" in msg
    catalog_with("cmdline: ['.{1000}']\n")      # at most about 40 ms on 4 KiB: allowed


def test_rules_built_outside_the_parser_are_checked_too():
    with pytest.raises(ValueError, match="RE2 has no lookahead"):
        Match(cmdline=("java(?= )",))


def test_example_catalog_regexes_are_re2():
    load_catalog(ROOT / "api" / "catalog" / "example.yaml")


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


def test_catalog_check_reports_deep_yaml_and_accepts_the_evil_regex(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nareas: " + "[" * DEPTH + "]" * DEPTH + "\n")
    out = subprocess.run([sys.executable, "-m", "api.commands.phobos", "catalog", "check", str(deep)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{deep}:2:71: the YAML is nested more than 64 levels deep" in out.stderr
    evil = tmp_path / "evil.yaml"
    evil.write_text("version: 1\nareas: [{name: a}]\nservices:\n"
                    f"  - {{name: s, area: a, match: {{cmdline: ['{EVIL_PATTERN}']}}}}\n")
    out = subprocess.run([sys.executable, "-m", "api.commands.phobos", "catalog", "check", str(evil)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert out.stderr == ""   # RE2 logs nothing of its own
