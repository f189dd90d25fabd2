"""The C program's constants and the Python that reads its maps agree.

tracer/probe.py reads the slot numbers, directions and map sizes from the
``#define`` lines of tracer/bpf/phobos.c at import; these tests parse the C
file on their own and check what the Python side ends up with, so that a
slot added, renumbered or renamed on one side only fails here - without
root, BCC or a kernel.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracer import agent, attribution, probe  # noqa: E402
from tracer.settings import TRACER_SETTINGS  # noqa: E402

SOURCE = ROOT / "tracer" / "bpf" / "phobos.c"


def c_defines() -> dict[str, int]:
    """Every ``#define NAME <integer>`` of the C file, by a parser of the test's own."""
    out = {}
    for line in SOURCE.read_text().splitlines():
        m = re.match(r"\s*#\s*define\s+(\w+)\s+(\S+)", line)
        if m and re.fullmatch(r"0x[0-9a-fA-F]+|\d+", m.group(2)):
            assert m.group(1) not in out, f"{m.group(1)} defined twice in {SOURCE.name}"
            out[m.group(1)] = int(m.group(2), 0)
    return out


C = c_defines()


def slots(prefix: str) -> dict[int, str]:
    named = {v: k for k, v in C.items() if k.startswith(prefix) and k != prefix + "SLOTS"}
    assert len(named) == len([k for k in C if k.startswith(prefix) and k != prefix + "SLOTS"]), \
        f"two {prefix}* names share a slot"
    return named


def test_probe_reads_the_same_defines_as_the_c_file_has():
    assert probe.bpf_constants() == C
    assert probe.BPF_CONSTANTS == C


@pytest.mark.parametrize("prefix, names", [("DROP_", probe.DROP_NAMES), ("STAT_", probe.STAT_NAMES),
                                           ("CFG_", probe.CONFIG_NAMES)])
def test_slot_names_follow_the_c_slot_numbers(prefix, names):
    named = slots(prefix)
    assert sorted(named) == list(range(C[prefix + "SLOTS"])), f"{prefix}* slots are not 0..{prefix}SLOTS-1"
    assert names == tuple(named[i][len(prefix):].lower() for i in range(C[prefix + "SLOTS"]))


def test_the_agent_reports_the_kernel_counters_it_names():
    # The agent reads these by name from Probe.drops() and Probe.stats().
    assert "socks" in probe.DROP_NAMES and "edges" in probe.DROP_NAMES
    assert {"events", "accept_no_listener", "missed_closes"} <= set(probe.STAT_NAMES)
    assert set(probe.DROP_NAMES) <= set(agent.LOSS_TEXT) | {"edges", "listeners", "orphans"}


def test_directions():
    assert probe.DIRECTIONS == {C["DIR_OUTBOUND"]: "outbound", C["DIR_INBOUND"]: "inbound"}
    assert probe.DIRECTION_IDS == {"outbound": C["DIR_OUTBOUND"], "inbound": C["DIR_INBOUND"]}
    assert C["DIR_OUTBOUND"] != C["DIR_INBOUND"] and 0 not in probe.DIRECTIONS  # 0: an empty key


def test_config_slots_used_by_the_probe_exist():
    assert {"CFG_SEEDING", "CFG_EPOCH"} <= set(C) and max(C["CFG_SEEDING"], C["CFG_EPOCH"]) < C["CFG_SLOTS"]
    assert "BPF_ARRAY(config, u32, CFG_SLOTS);" in SOURCE.read_text()
    assert "edges_created" in probe.STAT_NAMES  # read by Probe._refresh_ids


def test_socket_table_has_room_for_max_socks_in_whole_buckets():
    ways = C["SOCK_WAYS"]
    assert ways * 8 == 64, "a bucket's owner words fill one cache line"
    for max_socks in (1, 4, 512, 4096, 65536, 100_000, 1 << 20):
        bits = probe.sock_bucket_bits(max_socks)
        assert bits >= 1
        assert (1 << bits) * ways >= max_socks > (1 << (bits - 1)) * ways or bits == 1
    assert probe.sock_bucket_bits(C["MAX_SOCKS"]) == C["SOCK_BUCKET_BITS"]  # the C default fits the default


def test_struct_mirror_of_ctypes_layouts():
    import ctypes as ct

    class Val(ct.Structure):
        _fields_ = [("a", ct.c_ulonglong), ("b", ct.c_longlong), ("c", ct.c_uint * 3), ("d", ct.c_int)]

    assert probe._ctype_format(Val) == "<Qq3Ii"

    class Padded(ct.Structure):
        _fields_ = [("a", ct.c_ubyte), ("b", ct.c_ulonglong)]

    with pytest.raises(probe.ProbeError):
        probe._ctype_format(Padded)


def test_map_sizes_are_the_defaults_of_the_probe_and_of_the_agent_flags(monkeypatch):
    params = inspect.signature(probe.Probe).parameters
    assert params["max_edges"].default == C["MAX_EDGES"]
    assert params["max_socks"].default == C["MAX_SOCKS"]
    assert (TRACER_SETTINGS["MAX_EDGES"].default, TRACER_SETTINGS["MAX_SOCKS"].default) == \
        (C["MAX_EDGES"], C["MAX_SOCKS"])
    # The flags' defaults come from the environment when it sets them.
    monkeypatch.delenv("PHOBOS_MAX_EDGES", raising=False)
    monkeypatch.delenv("PHOBOS_MAX_SOCKS", raising=False)
    defaults = agent.configure_parser(argparse.ArgumentParser()).parse_args([])
    assert (defaults.max_edges, defaults.max_socks) == (C["MAX_EDGES"], C["MAX_SOCKS"])
    for name in ("MAX_EDGES", "MAX_SOCKS", "MAX_LISTENERS", "MAX_SEEDED", "MAX_ORPHANS"):
        assert C[name] > 0


def test_tcp_states_match_the_kernel_names_in_both_places():
    for name in ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "CLOSE", "LISTEN"):
        assert getattr(attribution, "TCP_" + name) == C["P_TCP_" + name], name
    # An open connection in /proc is one the kernel will still see go to CLOSE.
    assert attribution.TCP_ESTABLISHED in attribution.OPEN_STATES
    assert not {C["P_TCP_SYN_SENT"], C["P_TCP_SYN_RECV"], C["P_TCP_CLOSE"], C["P_TCP_LISTEN"]} \
        & attribution.OPEN_STATES


def test_constants_parser_reads_hex_and_ifndef_defaults(tmp_path):
    src = tmp_path / "p.c"
    src.write_text("#ifndef MAX_X\n#define MAX_X 0x10\n#endif\n  #  define DIR_A 3 /* c */\n"
                   "#define NOT_A_NUMBER (1 << 2)\n#define lower 1\n")
    assert probe.bpf_constants(str(src)) == {"MAX_X": 16, "DIR_A": 3}


def test_handshake_histogram_layout_is_the_kernels():
    """tracer/records.py reads handshake_hist with the bucket layout phobos.c fills it with."""
    from tracer import records

    assert (records.HANDSHAKE_BUCKETS, records.HANDSHAKE_MIN_LOG2) == (C["HS_BUCKETS"], C["HS_MIN_LOG2"])
    assert C["HS_BUCKETS"] & (C["HS_BUCKETS"] - 1) == 0, "the kernel masks the bucket index with HS_BUCKETS - 1"
    for us in (0, 1, 127, 128, 191, 192, 255, 256, 10_000, 999_999, 1_000_300, 3_000_000, 4_194_303, 2**40):
        b = records.handshake_bucket(us)
        low, high = records.handshake_bounds(b)
        assert low <= us < high, (us, b, low, high)
    bounds = [records.handshake_bounds(b) for b in range(C["HS_BUCKETS"])]
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    import struct

    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _calls(insns: bytes) -> list[tuple[int, int, int]]:
    """(src_reg, off, imm) of each call instruction."""
    import struct

    out = []
    for pos in range(0, len(insns), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", insns, pos)
        if code == 0x85:
            out.append((regs >> 4, off, imm))
    return out


def test_tcp_sock_casts_are_linked_to_the_kfunc_or_else_to_the_helper():
    mark = C["TCP_SOCK_CAST_CALL"]
    insns = b"".join([
        _insn(0xBF, dst=1, src=6),              # r1 = r6
        _insn(0xB7, dst=2, imm=mark),           # r2 = the mark as a value: not a call
        _insn(0x85, imm=mark),                  # the cast
        _insn(0x85, imm=1),                     # bpf_map_lookup_elem
        _insn(0x85, src=1, imm=mark),           # a call of the program's own function at that distance
        _insn(0x85, imm=mark),                  # a second cast
        _insn(0x95),                            # exit
    ])
    kfunc = probe.link_tcp_sock_casts(insns, 64927)
    helper = probe.link_tcp_sock_casts(insns)
    assert len(kfunc) == len(helper) == len(insns)
    assert _calls(kfunc) == [(2, 0, 64927), (0, 0, 1), (1, 0, mark), (2, 0, 64927)]
    assert _calls(helper) == [(0, 0, 137), (0, 0, 1), (1, 0, mark), (0, 0, 137)]
    # Everything but the casts' call instructions is left as it was.
    for linked in (kfunc, helper):
        assert [linked[i:i + 8] for i in (0, 8, 24, 32, 48)] == [insns[i:i + 8] for i in (0, 8, 24, 32, 48)]


def test_the_cast_call_is_no_helper_and_its_fallback_is_skc_to_tcp_sock():
    """Helper numbers as the running kernel's BTF names them (enum bpf_func_id)."""
    btf_path = Path("/sys/kernel/btf/vmlinux")
    if not btf_path.exists():
        pytest.skip("this kernel has no BTF to read the helper numbers from")
    btf = probe.Btf(btf_path.read_bytes())
    assert btf.enum_value("bpf_func_id", "BPF_FUNC_skc_to_tcp_sock") == probe._BPF_FUNC_SKC_TO_TCP_SOCK
    helpers = btf.enum_value("bpf_func_id", "__BPF_FUNC_MAX_ID")
    assert C["TCP_SOCK_CAST_CALL"] > 8 * helpers  # far beyond any helper a kernel will have
