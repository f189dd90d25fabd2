"""Tracer logic without BPF: aggregation, /proc and cgroup parsing, BTF offsets,
prerequisite messages, sinks and metrics.  Runs as any user."""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conftest import require  # noqa: E402
from tracer import aggregate, attribution, preflight, records, sinks  # noqa: E402
from tracer.metrics import MetricsServer, TracerMetrics  # noqa: E402
from tracer.probe import Btf, EdgeKey, ProbeError, kernel_offsets  # noqa: E402

OUT = EdgeKey(4026531840, 42, "outbound", "10.0.0.1", 0, "10.0.0.2", 80)
IN = EdgeKey(4026531840, 7, "inbound", "10.0.0.2", 80, "10.0.0.1", 0)


def vals(**kw):
    base = {"connects": 0, "accepts": 0, "closes": 0, "failures": 0, "open_delta": 0, "duration_ns_sum": 0,
            "bytes_sent": 0, "bytes_received": 0, "comm": "curl"}
    base.update(kw)
    return base


# --- aggregation ------------------------------------------------------------

def test_open_gauge_sums_kernel_deltas_across_intervals():
    agg = aggregate.Aggregator()
    first = agg.apply([(OUT, vals(connects=5, open_delta=5))])
    assert first[OUT].connects == 5 and first[OUT].open == 5
    second = agg.apply([(OUT, vals(connects=2, closes=3, open_delta=-1, duration_ns_sum=3_000_000))])
    assert second[OUT].connects == 2 and second[OUT].closes == 3 and second[OUT].open == 4
    # A quiet interval still reports the edge while connections are open.
    third = agg.apply([])
    assert third[OUT].connects == 0 and third[OUT].open == 4 and third[OUT].comm == "curl"


def test_idle_closed_edge_is_reported_once_then_retired():
    agg = aggregate.Aggregator()
    agg.apply([(OUT, vals(connects=1, open_delta=1))])
    last = agg.apply([(OUT, vals(closes=1, open_delta=-1))])
    assert last[OUT].closes == 1 and last[OUT].open == 0
    assert agg.apply([]) == {}
    assert agg.gauges == {}


def test_seeded_connections_count_as_open_never_as_connects():
    agg = aggregate.Aggregator()
    agg.seed(IN, 3, "nginx")
    out = agg.apply([])
    assert out[IN].open == 3 and out[IN].accepts == 0 and out[IN].comm == "nginx"
    out = agg.apply([(IN, vals(accepts=1, open_delta=1))])
    assert out[IN].open == 4 and out[IN].accepts == 1
    agg.unseed(IN)
    assert agg.apply([])[IN].open == 3


def test_gauge_never_goes_negative():
    agg = aggregate.Aggregator()
    assert agg.apply([(OUT, vals(closes=1, open_delta=-1))])[OUT].open == 0


def test_records_pass_the_contract():
    agg = aggregate.Aggregator()
    counts = agg.apply([(OUT, vals(connects=3, failures=1, open_delta=2, duration_ns_sum=5_500_000)),
                        (IN, vals(accepts=2, open_delta=2, comm="srv"))])
    listeners = [{"ip": "0.0.0.0", "port": 80, "pid": 7, "comm": "srv"},
                 {"ip": "0.0.0.0", "port": 80, "pid": 7, "comm": "srv"},  # same port, another netns
                 {"ip": "::", "port": 443, "pid": 8, "comm": "tls"}]

    def attribute(pid, comm, endpoint):
        return {"comm": comm, "service": f"svc-{pid}", "container_id": "c" * 64, "pod": "p", "namespace": "ns"}

    conns, lis = aggregate.build_records(counts, listeners, ts=1_700_000_000, interval_s=10, dc="eu-1",
                                         host="h1", host_ip="192.0.2.2", attribute=attribute)
    assert len(conns) == 2 and len(lis) == 2
    for rec in conns:
        # the optional nat_ip and nat_port are added by tracer/nat.py
        assert set(rec) == {f.name for f in records.CONNECTION_FIELDS} - {"nat_ip", "nat_port"}
        records.validate("connections", rec)
    for rec in lis:
        assert set(rec) == {f.name for f in records.LISTENER_FIELDS}
        records.validate("listeners", rec)
    out = next(r for r in conns if r["direction"] == "outbound")
    assert out["local_port"] == 0 and out["remote_ip"] == "::ffff:10.0.0.2" and out["remote_port"] == 80
    assert out["duration_ms_sum"] == 5 and out["open"] == 2 and out["service"] == "svc-42"
    assert out["ts"] == records.format_ts(1_700_000_000) and out["host_ip"] == "::ffff:192.0.2.2"
    inbound = next(r for r in conns if r["direction"] == "inbound")
    assert inbound["remote_port"] == 0 and inbound["accepts"] == 2


def test_record_counts_are_capped_to_the_contract():
    counts = aggregate.EdgeCounts(connects=2**40, open=2**33)
    rec = aggregate.connection_record(OUT, counts, ts=0, interval_s=10, dc="", host="h", host_ip="::", proc={})
    records.validate("connections", rec)
    assert rec["connects"] == records.U32


# --- /proc parsing ------------------------------------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00000F5C 00000000     0        0 0 3 0000000000000000
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100C80A:0050 0000000000000000FFFF00000200C80A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 000000000000000000000000010000000:01BB 00000000000000000000000001000000:9C40 01 00000000:00000000
   3: 00000000000000000000000001000000:01BB 00000000000000000000000001000000:9C40 08 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
"""


def test_parse_proc_net_tcp_ipv4():
    socks = attribution.parse_proc_net_tcp(PROC_NET_TCP)
    assert socks[0] == attribution.ProcSocket("127.0.0.1", 8080, "0.0.0.0", 0, 0x0A, 1001)
    assert socks[2].local_port == 0xD431 and socks[2].remote_port == 8080 and socks[2].state == 1
    assert socks[3].state == 6 and socks[3].inode == 0


def test_parse_proc_net_tcp6_with_v4_mapped_and_malformed_lines():
    socks = attribution.parse_proc_net_tcp(PROC_NET_TCP6)
    assert socks[0].local_ip == "::" and socks[0].local_port == 80 and socks[0].state == 0x0A
    assert (socks[1].local_ip, socks[1].remote_ip, socks[1].remote_port) == ("10.200.0.1", "10.200.0.2", 50000)
    assert len(socks) == 3  # the truncated line is skipped
    assert socks[2].local_ip == "::1" and socks[2].state == 8


def _fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    layout = {
        100: {"comm": "nginx", "netns": 4026531840, "fds": [1001, 1002], "tcp": PROC_NET_TCP, "tcp6": ""},
        200: {"comm": "curl", "netns": 4026531840, "fds": [1003], "tcp": PROC_NET_TCP, "tcp6": ""},
        300: {"comm": "api", "netns": 4026532999, "fds": [2001, 2002, 2003], "tcp": "", "tcp6": PROC_NET_TCP6},
    }
    for pid, spec in layout.items():
        d = proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "ns").mkdir()
        (d / "net").mkdir()
        (d / "comm").write_text(spec["comm"] + "\n")
        (d / "stat").write_text(f"{pid} ({spec['comm']}) S 1 " + " ".join(["0"] * 16) + f" {pid}000 0 0\n")
        os.symlink(f"net:[{spec['netns']}]", d / "ns" / "net")
        for i, inode in enumerate(spec["fds"]):
            os.symlink(f"socket:[{inode}]", d / "fd" / str(i + 3))
        os.symlink("/dev/null", d / "fd" / "0")
        header = "  sl  local_address rem_address   st\n"
        (d / "net" / "tcp").write_text(spec["tcp"] or header)
        (d / "net" / "tcp6").write_text(spec["tcp6"] or header)
    (proc / "self").mkdir()
    return proc


def test_tcp_snapshot_finds_listeners_and_open_connections_per_netns(tmp_path):
    snap = attribution.tcp_snapshot(str(_fake_proc(tmp_path)))
    assert snap.listeners[(4026531840, "127.0.0.1", 8080)] == (100, "nginx", 1)
    assert snap.listeners[(4026532999, "::", 80)] == (300, "api", 1)
    conns = snap.connections
    assert conns[(4026531840, "127.0.0.1", 8080, "127.0.0.1", 0xD431)] == 100
    assert conns[(4026531840, "127.0.0.1", 0xD431, "127.0.0.1", 8080)] == 200
    assert conns[(4026532999, "10.200.0.1", 80, "10.200.0.2", 50000)] == 300
    assert conns[(4026532999, "::1", 443, "::1", 40000)] == 300  # CLOSE_WAIT still counts as open
    assert len(conns) == 4  # TIME_WAIT (no owner) is not a connection


DOCKER_ID = "3f1c" + "a" * 60
CGROUPS = {
    "docker cgroupfs": (f"12:pids:/docker/{DOCKER_ID}\n0::/docker/{DOCKER_ID}\n", DOCKER_ID, "", ""),
    "docker systemd": (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", DOCKER_ID, "", ""),
    "containerd k8s": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod0a1b2c3d_1111_2222_3333_444455556666.slice/"
        f"cri-containerd-{DOCKER_ID}.scope\n",
        DOCKER_ID, "0a1b2c3d-1111-2222-3333-444455556666", ""),
    "cri-o": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        "kubepods-besteffort-podaaaaaaaa_bbbb_cccc_dddd_eeeeeeeeeeee.slice/"
        f"crio-{DOCKER_ID}.scope\n",
        DOCKER_ID, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", ""),
    "kubepods cgroupfs v1": (
        f"11:memory:/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/{DOCKER_ID}\n"
        f"1:name=systemd:/kubepods/burstable/pod0a1b2c3d-1111-2222-3333-444455556666/{DOCKER_ID}\n",
        DOCKER_ID, "0a1b2c3d-1111-2222-3333-444455556666", ""),
    "systemd service": ("0::/system.slice/nginx.service\n", "", "", "nginx.service"),
    "user unit": ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/dev.service\n", "", "", "dev.service"),
    "plain": ("0::/\n", "", "", ""),
}


@pytest.mark.parametrize("name", sorted(CGROUPS))
def test_cgroup_paths(name):
    text, container, pod_uid, unit = CGROUPS[name]
    info = attribution.cgroup_info(attribution.parse_cgroup(text))
    assert (info["container_id"], info["pod_uid"], info["unit"]) == (container, pod_uid, unit)


def test_default_service_names():
    assert attribution.default_service({"labels": {"app.kubernetes.io/name": "cart", "app": "x"}}) == "cart"
    assert attribution.default_service({"labels": {"app": "x"}, "comm": "java"}) == "x"
    assert attribution.default_service({"unit": "nginx.service", "cgroup": "/system.slice/nginx.service",
                                        "comm": "nginx: worker"}) == "nginx"
    user = "/user.slice/user-1000.slice/user@1000.service/app.slice/dev.service"
    assert attribution.default_service({"unit": "dev.service", "cgroup": user, "comm": "python3"}) == "python3"


def test_attributor_reads_pod_identity_and_asks_the_catalog(tmp_path):
    proc = _fake_proc(tmp_path)
    d = proc / "300"
    (d / "cgroup").write_text(CGROUPS["containerd k8s"][0])
    (d / "cmdline").write_bytes(b"/app/api\0--port\x0080\0")
    (d / "environ").write_bytes(b"HOSTNAME=api-7d9f-abcde\0PATH=/bin\0")
    secrets = d / "root" / "var/run/secrets/kubernetes.io/serviceaccount"
    secrets.mkdir(parents=True)
    (secrets / "namespace").write_text("shop\n")
    (d / "root" / "etc/podinfo").mkdir(parents=True)
    (d / "root" / "etc/podinfo/labels").write_text('app.kubernetes.io/name="checkout"\ntier="web"\n')

    a = attribution.Attributor(str(proc))
    info = a.attribute(300)
    assert info["container_id"] == DOCKER_ID and info["pod_uid"] == "0a1b2c3d-1111-2222-3333-444455556666"
    assert info["pod"] == "api-7d9f-abcde" and info["namespace"] == "shop"
    assert info["labels"] == {"app.kubernetes.io/name": "checkout", "tier": "web"}
    assert info["service"] == "checkout" and info["cmdline"] == "/app/api --port 80"

    seen = []

    class FakeCatalog:
        def match_service(self, query):
            seen.append(query)
            return "payments" if query.get("port") == 80 else None

    a = attribution.Attributor(str(proc), catalog=FakeCatalog(), host="node-1")
    assert a.attribute(300, endpoint={"ip": "10.0.0.1", "port": 80})["service"] == "payments"
    assert a.attribute(300, endpoint={"ip": "10.0.0.1", "port": 81})["service"] == "checkout"
    assert seen[0]["host"] == "node-1" and seen[0]["labels"]["tier"] == "web"

    class BrokenCatalog:
        def match_service(self, query):
            raise RuntimeError("bad rule")

    assert attribution.Attributor(str(proc), catalog=BrokenCatalog()).attribute(100)["service"] == "nginx"
    # A pid that is gone keeps the kernel's comm.
    assert attribution.Attributor(str(proc)).attribute(999, "short-lived")["service"] == "short-lived"


# --- BTF ------------------------------------------------------------------------

def _btf_blob() -> bytes:
    """A small BTF blob shaped like the kernel's: anonymous unions, a typedef,
    a struct with bitfields (kind_flag), an enum to skip, a function."""
    strings = bytearray(b"\0")

    def name(text):
        if not text:
            return 0
        off = len(strings)
        strings.extend(text.encode() + b"\0")
        return off

    types = bytearray()

    def record(kind, nm, size_type, vlen=0, kflag=0, extra=b""):
        types.extend(struct.pack("<III", name(nm), (kflag << 31) | (kind << 24) | vlen, size_type) + extra)

    def members(items, kflag=0):
        return b"".join(struct.pack("<III", name(n), t, off) for n, t, off in items)

    record(1, "int", 4, extra=struct.pack("<I", 32))                                     # 1
    record(4, "", 4, 2, extra=members([("skc_dport", 1, 0), ("skc_num", 1, 16)]))       # 2
    record(5, "", 4, 2, extra=members([("skc_portpair", 1, 0), ("", 2, 0)]))            # 3
    record(4, "sock_common", 136, 4, kflag=1, extra=members([                            # 4
        ("skc_family", 1, 128), ("skc_reuse", 1, (4 << 24) | 152), ("", 3, 96), ("skc_net", 5, 384)]))
    record(8, "possible_net_t", 6)                                                       # 5
    record(4, "", 8, 1, extra=members([("net", 1, 0)]))                                  # 6
    record(6, "sk_state", 4, 2, extra=struct.pack("<IiIi", name("A"), 0, name("B"), 1))  # 7
    record(4, "sock", 760, 1, extra=members([("__sk_common", 4, 0)]))                    # 8
    record(4, "ns_common", 80, 2, extra=members([("stashed", 1, 0), ("inum", 1, 192)]))  # 9
    record(4, "net", 4288, 2, extra=members([("passive", 1, 0), ("ns", 9, 1216)]))       # 10
    record(13, "", 1, 2, extra=struct.pack("<IIII", name("sk"), 1, name("arg"), 1))     # 11
    record(12, "inet_csk_accept", 11)                                                    # 12
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


def test_kernel_offsets_from_btf():
    off = kernel_offsets(_btf_blob())
    assert (off.skc_net, off.net_ns_inum, off.skc_num, off.accept_nargs) == (48, 176, 14, 2)
    assert "-DSKC_NET_OFF=48" in off.cflags() and "-DNET_NS_INUM_OFF=176" in off.cflags()
    btf = Btf(_btf_blob())
    assert btf.offset("sock_common", "skc_reuse") == 19  # bitfield offset with kind_flag set


def test_bad_btf_is_a_clear_error():
    with pytest.raises(ProbeError, match="magic"):
        kernel_offsets(b"\0" * 64)
    blob = _btf_blob().replace(b"inum", b"xnum")
    with pytest.raises(ProbeError, match="struct ns_common has no member inum"):
        kernel_offsets(blob)


def test_kernel_offsets_of_the_running_kernel_when_readable():
    require(os.access("/sys/kernel/btf/vmlinux", os.R_OK),
            "no readable kernel BTF (/sys/kernel/btf/vmlinux; kernels need CONFIG_DEBUG_INFO_BTF)")
    from tracer.probe import read_btf

    off = kernel_offsets(read_btf())
    assert 0 < off.skc_net < 136 and off.net_ns_inum > 0


# --- prerequisites ---------------------------------------------------------------

def _good_dirs(tmp_path):
    tracefs = tmp_path / "tracing"
    (tracefs / "events/sock/inet_sock_set_state").mkdir(parents=True)
    modules = tmp_path / "modules"
    (modules / "6.18.0-test/build/include").mkdir(parents=True)
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"\x9f\xeb")
    return dict(euid=0, caps={preflight.CAP_SYS_ADMIN}, release="6.18.0-test", modules_dir=str(modules),
                tracefs_candidates=[str(tracefs)], btf_path=str(btf), bcc_importer=lambda: object())


def test_preflight_passes_on_a_complete_host(tmp_path):
    assert preflight.run_checks(**_good_dirs(tmp_path)) == []


def test_preflight_kernel_version(tmp_path):
    assert preflight.check_kernel("6.18.44-fc-v1300") is None
    assert preflight.check_kernel("5.12.0") is None
    old = preflight.check_kernel("5.10.0-28-amd64")
    assert old is not None and "5.12" in old.what and "5.10.0-28-amd64" in old.what
    assert preflight.check_kernel("4.19.0") is not None
    assert preflight.check_kernel("weird") is None  # not a version: the load itself will say
    problems = preflight.run_checks(**{**_good_dirs(tmp_path), "release": "5.4.0-150-generic"})
    assert any("5.12" in p.what for p in problems)


def test_preflight_privileges():
    assert preflight.check_privileges(1000, {preflight.CAP_BPF, preflight.CAP_PERFMON}) is None
    problem = preflight.check_privileges(1000, {preflight.CAP_BPF})
    assert "CAP_PERFMON" in problem.what and "CAP_BPF" not in problem.what.split("missing")[1]
    assert "root" in problem.fix
    assert preflight.check_privileges(0, set()) is not None  # root without capabilities (userns)


def test_preflight_names_each_missing_prerequisite(tmp_path):
    dirs = _good_dirs(tmp_path)

    def no_bcc():
        raise ImportError("No module named 'bcc'")

    cases = {
        "privileges": (dict(euid=1000, caps=set()), "CAP_BPF"),
        "bcc": (dict(bcc_importer=no_bcc), "apt-get install python3-bpfcc"),
        "headers": (dict(release="6.99.0-other"), "apt-get install linux-headers-6.99.0-other"),
        "tracefs": (dict(tracefs_candidates=[str(tmp_path / "nothing")]),
                    "mount -t tracefs tracefs /sys/kernel/tracing"),
        "btf": (dict(btf_path=str(tmp_path / "nobtf")), "CONFIG_DEBUG_INFO_BTF"),
    }
    for name, (override, fix) in cases.items():
        problems = preflight.run_checks(**{**dirs, **override})
        assert len(problems) == 1, (name, problems)
        assert fix in str(problems[0]), (name, problems)
    if os.geteuid() != 0:  # root reads a 0700 directory anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o000)
        problems = preflight.run_checks(**{**dirs, "tracefs_candidates": [str(locked)]})
        assert "not readable" in problems[0].what and "root" in problems[0].fix
    (tmp_path / "tracing/events/sock/inet_sock_set_state").rmdir()
    problems = preflight.run_checks(**dirs)
    assert len(problems) == 1 and "sock:inet_sock_set_state" in problems[0].what


@pytest.mark.slow
def test_agent_exits_2_with_a_clear_message_and_no_traceback(tmp_path):
    env = dict(os.environ, PHOBOS_TRACEFS=str(tmp_path / "no-tracefs"), PHOBOS_MODULES_DIR=str(tmp_path),
               PHOBOS_METRICS_PORT="0")
    proc = subprocess.run([sys.executable, "-m", "tracer.agent"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in proc.stderr
    assert f"linux-headers-{os.uname().release}" in proc.stderr


def test_every_flag_has_an_environment_variable(monkeypatch):
    from tracer import agent

    monkeypatch.setenv("PHOBOS_INTERVAL", "3")
    monkeypatch.setenv("PHOBOS_SINK", "http://127.0.0.1:1")
    monkeypatch.setenv("PHOBOS_MODE", "tracepoint")
    monkeypatch.setenv("PHOBOS_NODE_ZONE", "zone-b")
    monkeypatch.setenv("PHOBOS_METRICS_PORT", "0")
    args = agent.configure_parser(argparse.ArgumentParser()).parse_args([])
    assert (args.interval, args.sink, args.mode, args.dc, args.metrics_port) == (
        3.0, "http://127.0.0.1:1", "tracepoint", "zone-b", 0)
    assert args.host == socket.gethostname() and args.metrics_addr == "127.0.0.1"
    parser = agent.configure_parser(argparse.ArgumentParser())
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "[PHOBOS_" in action.help, action.dest


# --- sinks ---------------------------------------------------------------------------

class _Ingest:
    """A local ingest endpoint that answers with scripted status codes."""

    def __init__(self, statuses=()):
        self.bodies, self.headers, self.statuses = [], [], list(statuses)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.statuses.pop(0) if outer.statuses else 200
                if status == 200:
                    outer.bodies.append(json.loads(body))
                    outer.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() returns at the loop's next poll: the default 0.5 s made
        # up most of each sink test.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


CONN = {"v": 1, "kind": "c"}
LIS = {"v": 1, "kind": "l"}


def test_http_sink_posts_batches_with_token_and_batch_id():
    ingest = _Ingest()
    try:
        sink = sinks.make_sink(ingest.url, host="h1", token="s3cret")
        sink.send([CONN, CONN], [LIS])
        sink.send([CONN], [])
        assert len(ingest.bodies) == 2
        first = ingest.bodies[0]
        assert first["connections"] == [CONN, CONN] and first["listeners"] == [LIS]
        host, *boot, seq = first["batch_id"].split("-")
        assert host == "h1" and seq == "1" and "-".join(boot) == sinks.boot_id()
        assert ingest.bodies[1]["batch_id"].endswith("-2")
        assert ingest.headers[0]["Authorization"] == "Bearer s3cret"
        assert sink.sent == 4 and sink.queue_len == 0 and sink.errors == 0
    finally:
        ingest.close()


def test_http_sink_retries_with_backoff_keeping_the_batch_id():
    ingest = _Ingest(statuses=[503, 503])
    slept = []
    try:
        sink = sinks.HttpSink(ingest.url, host="h", sleep=slept.append, retry_budget_s=60)
        sink.send([CONN], [LIS])
        assert slept == [0.5, 1.0] and sink.errors == 2
        assert len(ingest.bodies) == 1 and ingest.bodies[0]["batch_id"].endswith("-1")
        assert "Authorization" not in ingest.headers[0]
    finally:
        ingest.close()


def test_http_sink_queue_is_bounded_and_drops_the_oldest():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    sink = sinks.HttpSink(dead, host="h", max_queue=5, retry_budget_s=0, sleep=lambda s: None)
    for i in range(4):
        sink.send([{"v": 1, "n": i}, {"v": 1, "n": i}], [])
    assert sink.queue_len == 5 and sink.dropped == 3 and sink.errors >= 4
    ingest = _Ingest()
    try:
        sink.endpoint = ingest.url + "/api/v1/ingest"
        sink.flush()
        got = [r["n"] for body in ingest.bodies for r in body["connections"]]
        assert got == [1, 2, 2, 3, 3] and sink.queue_len == 0
    finally:
        ingest.close()


def test_http_sink_drops_a_batch_the_api_refuses():
    ingest = _Ingest(statuses=[400])
    try:
        sink = sinks.HttpSink(ingest.url, host="h", sleep=lambda s: None)
        sink.send([CONN], [])
        sink.send([CONN], [])
        assert sink.dropped == 1 and len(ingest.bodies) == 1
    finally:
        ingest.close()


def test_sink_factory_and_plug_point(capsys):
    out = sinks.make_sink("stdout")
    out.send([{"a": 1}], [{"b": 2}])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"a": 1}, {"b": 2}]
    with pytest.raises(sinks.SinkError, match="unknown sink"):
        sinks.make_sink("carrier-pigeon://loft")

    class FakeKafka(sinks.Sink):
        scheme = "kafka"

        def __init__(self, url, **opts):
            super().__init__()
            self.url, self.opts, self.batches = url, opts, []

        def send(self, connections, listeners):
            self.batches.append((connections, listeners))

    registered = dict(sinks._REGISTRY)  # the real kafka:// sink, once tracer.kafka_sink is imported
    sinks.register_sink("kafka", FakeKafka)
    try:
        k = sinks.make_sink("kafka://b1:9092/phobos", host="h1")
        assert isinstance(k, FakeKafka) and k.opts["host"] == "h1"
    finally:
        sinks._REGISTRY.clear()
        sinks._REGISTRY.update(registered)


# --- metrics ---------------------------------------------------------------------------

def test_metrics_text_and_endpoints():
    m = TracerMetrics(mode="tracepoint", interval_s=1)
    m.intervals, m.records["connections"], m.map_drops = 3, 12, {"edges": 2, "socks": 0}
    text = m.render()
    assert 'phobos_tracer_info{mode="tracepoint"} 1' in text
    assert "phobos_tracer_intervals_drained_total 3" in text
    assert 'phobos_tracer_records_emitted_total{kind="connections"} 12' in text
    assert 'phobos_tracer_map_full_drops_total{map="edges"} 2' in text
    for name in ("missed_events_total", "missed_closes_total", "reconciliations_total",
                 "reconciled_connections_total"):
        assert f"# TYPE phobos_tracer_{name} counter" in text
    server = MetricsServer(m, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert urllib.request.urlopen(base + "/metrics").read().decode() == m.render()
        assert urllib.request.urlopen(base + "/healthz").status == 200
        m.last_drain_at = 1.0  # long ago: the drain loop is stuck
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz")
        assert err.value.code == 503
    finally:
        server.close()


# --- agent logic with a fake probe ---------------------------------------------------------

class FakeProbe:
    """Stands in for tracer.probe.Probe: records what the agent asks of the kernel."""

    def __init__(self, tracked=(), orphans=()):
        self.seeding = []
        self.listeners_seeded = []
        self.connections_seeded = {}
        self._tracked = set(tracked)
        self._orphans = set(orphans)
        self.to_drain = []
        self.listener_map = []
        self.socks_drops = 0
        self.max_socks = 512

    def set_seeding(self, on):
        self.seeding.append(on)

    def seed_listener(self, netns, port, ip, pid, comm, count):
        self.listeners_seeded.append((netns, port, ip, pid, comm, count))
        return True

    def tracked_tuples(self):
        return self._tracked

    def seeded_tuples(self):
        return set(self.connections_seeded)

    def seed_connection(self, tup, edge, comm):
        self.connections_seeded[tup] = (edge, comm)
        return True

    def orphans(self):
        return self._orphans

    def unseed(self, tup):
        return self.connections_seeded.pop(tup, None) is not None

    def drain(self):
        out, self.to_drain = self.to_drain, []
        return out

    def listeners(self):
        return self.listener_map

    def drops(self):
        return {"edges": 0, "socks": self.socks_drops, "listeners": 0, "orphans": 0}

    def stats(self):
        return {"events": 10, "accept_no_listener": 0, "missed_closes": 0}

    def missed_events(self):
        return 0


class ListSink(sinks.Sink):
    def __init__(self):
        super().__init__()
        self.batches = []

    def send(self, connections, listeners):
        self.batches.append((connections, listeners))


def _agent(tmp_path, probe):
    from tracer.agent import Agent

    args = argparse.Namespace(dc="zone-a", host="h1", interval=10.0, duration=0)
    proc = _fake_proc(tmp_path)
    sink = ListSink()
    agent = Agent(args, probe, sink, attribution.Attributor(str(proc)), TracerMetrics("tracepoint", 10))
    return agent, sink, proc


def test_seed_classifies_directions_skips_tracked_and_unseeds_orphans(tmp_path):
    tracked = (4026531840, "127.0.0.1", 0xD431, "127.0.0.1", 8080)  # the kernel already follows it
    orphan = (4026532999, "::1", 443, "::1", 40000)                # closed during the snapshot
    probe = FakeProbe(tracked=[tracked], orphans=[orphan])
    agent, sink, proc = _agent(tmp_path, probe)
    result = agent.seed(str(proc))
    assert probe.seeding == [True, False]
    assert (4026531840, 8080, "127.0.0.1", 100, "nginx", 1) in probe.listeners_seeded
    seeded = probe.connections_seeded
    assert tracked not in seeded and orphan not in seeded
    inbound, comm = seeded[(4026531840, "127.0.0.1", 8080, "127.0.0.1", 0xD431)]
    assert (inbound.direction, inbound.pid, inbound.local_port, inbound.remote_port) == ("inbound", 100, 8080, 0)
    assert comm == "nginx"
    mapped, _ = seeded[(4026532999, "10.200.0.1", 80, "10.200.0.2", 50000)]
    assert mapped.direction == "inbound" and mapped.pid == 300  # v4 client of a listener on ::
    assert result == {"listeners": 2, "connections": 2}

    conns, _ = agent.drain(10)
    opened = {(r["direction"], r["local_port"]): r for r in conns}
    assert opened[("inbound", 8080)]["open"] == 1 and opened[("inbound", 8080)]["accepts"] == 0
    assert opened[("inbound", 80)]["open"] == 1
    assert ("inbound", 443) not in opened  # the orphan was taken back


def test_drain_sends_valid_records_and_updates_metrics(tmp_path):
    probe = FakeProbe()
    agent, sink, _ = _agent(tmp_path, probe)
    edge = EdgeKey(4026531840, 200, "outbound", "127.0.0.1", 0, "127.0.0.1", 8080)
    probe.to_drain = [(edge, vals(connects=3, closes=1, open_delta=2))]
    probe.listener_map = [{"netns": 4026531840, "port": 8080, "pid": 100, "ip": "127.0.0.1", "comm": "nginx",
                           "count": 1}]
    agent.drain(10)
    (conns, lis), = sink.batches
    assert conns[0]["pid"] == 200 and conns[0]["comm"] == "curl" and conns[0]["connects"] == 3
    assert conns[0]["open"] == 2 and conns[0]["dc"] == "zone-a" and conns[0]["host"] == "h1"
    assert lis[0]["service"] == "nginx" and lis[0]["port"] == 8080
    m = agent.metrics
    assert (m.intervals, m.edges_read, m.records["connections"], m.open_connections) == (1, 1, 1, 2)
    assert m.kernel_events == 10 and agent.invalid_records == 0


def test_socket_map_drops_trigger_one_reconciliation_that_seeds_only_unfollowed(tmp_path, caplog):
    refused = (4026531840, "127.0.0.1", 0xD431, "127.0.0.1", 8080)
    probe = FakeProbe(tracked=[refused])
    agent, sink, proc = _agent(tmp_path, probe)
    agent.seed(str(proc))
    assert refused not in probe.connections_seeded and len(probe.connections_seeded) == 3
    agent.drain(10)
    assert agent.metrics.reconciliations == 0 and agent.metrics.open_connections == 3

    # The kernel's socket map refused a socket: the next drain reconciles with /proc and
    # seeds just that one (the three seeded at start-up are followed already).
    probe._tracked = set()
    probe.socks_drops = 5
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        conns, _ = agent.drain(10)
    m = agent.metrics
    assert (m.reconciliations, m.reconciled_connections, m.open_connections) == (1, 1, 4)
    assert refused in probe.connections_seeded
    out = [r for r in conns if r["direction"] == "outbound" and r["remote_port"] == 8080]
    assert out and out[0]["open"] == 1 and out[0]["connects"] == 0
    assert m.map_drops["socks"] == 5 and 'phobos_tracer_map_full_drops_total{map="socks"} 5' in m.render()
    assert "phobos_tracer_reconciliations_total 1" in m.render()
    socks_warnings = [r for r in caplog.records if "socket table full" in r.getMessage()]
    assert len(socks_warnings) == 1 and "--max-socks" in socks_warnings[0].getMessage()

    agent.drain(10)  # no new drops: no new reconciliation
    assert m.reconciliations == 1
    probe.socks_drops = 9  # new drops: reconciled again, nothing counted twice, warned at most once a minute
    agent._next_reconcile = 0.0  # as if ten times the last reconciliation's duration had passed
    caplog.clear()
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        agent.drain(10)
    assert (m.reconciliations, m.reconciled_connections, m.open_connections) == (2, 1, 4)
    assert not [r for r in caplog.records if "socket table full" in r.getMessage()]
    assert agent.summary()["map_drops"]["socks"] == 9 and agent.summary()["reconciliations"] == 2


def test_reconciliation_takes_back_connections_closed_while_reading_proc(tmp_path):
    gone = (4026532999, "::1", 443, "::1", 40000)  # closed between the /proc read and the seeding
    probe = FakeProbe(orphans=[gone])
    agent, _, proc = _agent(tmp_path, probe)
    probe.socks_drops = 1
    agent.drain(10)
    assert gone not in probe.connections_seeded
    assert agent.metrics.reconciled_connections == 3 and agent.metrics.open_connections == 3


def test_a_full_seeded_map_is_reported_as_drops(tmp_path, caplog):
    probe = FakeProbe()
    probe.seed_connection = lambda tup, edge, comm: False  # the kernel refuses every insert
    agent, _, proc = _agent(tmp_path, probe)
    agent.seed(str(proc))
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        agent.drain(10)
    assert agent.metrics.open_connections == 0
    assert agent.summary()["map_drops"]["seeded"] == 4
    assert 'phobos_tracer_map_full_drops_total{map="seeded"} 4' in agent.metrics.render()
    assert [r for r in caplog.records if "seeded full" in r.getMessage()]


class FakeConntrack:
    """Stands in for tracer.conntrack.ConntrackReader: hands out prepared drains."""

    max_entries = 100

    def __init__(self, drains):
        self.drains = list(drains)

    def drain(self):
        item = self.drains.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def _ct_drain(translations, dropped=0):
    from tracer.conntrack import Drain

    return Drain(translations=tuple(translations), entries=len(translations), nat_entries=len(translations),
                 dropped=dropped, truncated=dropped > 0, overruns=0, malformed=0, interrupted=0,
                 kernel_filtered=True, seconds=0.01, cpu_seconds=0.01)


def test_drain_follows_nat_to_the_backends_and_counts_it(tmp_path, caplog):
    from tracer.agent import Agent
    from tracer.conntrack import ConntrackError, Translation

    probe = FakeProbe()
    args = argparse.Namespace(dc="", host="h1", interval=10.0, duration=0)
    sink = ListSink()
    ct = FakeConntrack([
        _ct_drain([Translation("10.201.1.2", "10.96.0.10", 80, "10.200.0.2", 8080, "10.201.1.2", 2, 2, 0),
                   Translation("10.201.1.2", "10.96.0.10", 80, "10.200.0.3", 8080, "10.201.1.2", 1, 1, 0)],
                  dropped=3),
        ConntrackError(105, "No buffer space"),
    ])
    agent = Agent(args, probe, sink, attribution.Attributor(str(_fake_proc(tmp_path))),
                  TracerMetrics("tracepoint", 10), conntrack=ct)
    edge = EdgeKey(4026531840, 200, "outbound", "10.201.1.2", 0, "10.96.0.10", 80)
    probe.to_drain = [(edge, vals(connects=3, closes=3))]
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        conns, _ = agent.drain(10)
    assert [(r["remote_ip"], r["remote_port"], r["nat_ip"], r["nat_port"], r["connects"]) for r in conns] == [
        ("::ffff:10.200.0.2", 8080, "::ffff:10.96.0.10", 80, 2), ("::ffff:10.200.0.3", 8080, "::ffff:10.96.0.10", 80, 1)]
    m = agent.metrics
    assert (m.nat["enabled"], m.nat["records_translated"], m.nat["translations"], m.nat["dropped"]) == (1, 1, 2, 3)
    assert m.records["connections"] == 2
    text = m.render()
    assert "phobos_tracer_nat_records_translated_total 1" in text and "phobos_tracer_conntrack_dropped_total 3" in text
    assert any("--nat-max-entries 100" in r.getMessage() for r in caplog.records)
    # a failed conntrack drain: the interval goes on without NAT, said once
    probe.to_drain = [(edge, vals(connects=1, closes=1))]
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        conns, _ = agent.drain(10)
    assert [(r["remote_ip"], r["nat_port"], r["connects"]) for r in conns] == [("::ffff:10.96.0.10", 0, 1)]
    assert m.nat["errors"] == 1 and "phobos_tracer_conntrack_errors_total 1" in m.render()
    assert sum("reading NAT translations failed" in r.getMessage() for r in caplog.records) == 1
    assert agent.summary()["nat"]["records_translated"] == 1


def test_without_nat_records_carry_the_defaults(tmp_path):
    probe = FakeProbe()
    agent, sink, _ = _agent(tmp_path, probe)
    probe.to_drain = [(EdgeKey(4026531840, 200, "outbound", "10.0.0.1", 0, "10.96.0.10", 80), vals(connects=1))]
    conns, _ = agent.drain(10)
    assert (conns[0]["remote_ip"], conns[0]["nat_ip"], conns[0]["nat_port"]) == ("::ffff:10.96.0.10", "::", 0)
    assert agent.metrics.nat["enabled"] == 0 and "phobos_tracer_nat_enabled 0" in agent.metrics.render()


def test_a_conntrack_reader_that_cannot_open_is_said_once_and_tracing_goes_on(caplog):
    from tracer.agent import _open_conntrack, configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["--nat-netns", "/nonexistent/netns"])
    assert args.nat is True and args.nat_max_entries == 100_000
    with caplog.at_level("WARNING", logger="phobos.tracer"):
        assert _open_conntrack(args) is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("not following NAT: connection tracking of /nonexistent/netns cannot be read")
    assert "--no-nat" in warning
    assert configure_parser(argparse.ArgumentParser()).parse_args(["--no-nat"]).nat is False


def test_health_figures_are_summed_and_the_histogram_bucket_by_bucket():
    agg = aggregate.Aggregator()
    hist = [0] * records.HANDSHAKE_BUCKETS
    hist[3] = 2
    out = agg.apply([(OUT, vals(connects=2, handshakes=2, handshake_us_sum=700, handshake_hist=hist,
                                retransmits=1, aborts=1)),
                     (OUT, vals(connects=1, handshakes=1, handshake_us_sum=1_000_000,
                                handshake_hist=[0] * 26 + [1] + [0] * 5)),
                     (IN, vals(accepts=1, handshake_hist=[0] * records.HANDSHAKE_BUCKETS))])
    c = out[OUT]
    assert (c.handshakes, c.handshake_us_sum, c.retransmits, c.aborts) == (3, 1_000_700, 1, 1)
    assert c.handshake_hist[3] == 2 and c.handshake_hist[26] == 1 and sum(c.handshake_hist) == 3
    assert out[IN].handshake_hist == []

    class Edge:
        netns, pid, direction, local_ip, local_port, remote_ip, remote_port = 1, 7, "outbound", "10.0.0.1", 0, \
            "10.0.0.2", 80

    rec = aggregate.connection_record(Edge(), c, ts=1_700_000_000, interval_s=10, dc="", host="h", host_ip="",
                                      proc={})
    assert records.validate("connections", rec)["handshake_hist"] == c.handshake_hist
    quiet = aggregate.connection_record(Edge(), out[IN], ts=1_700_000_000, interval_s=10, dc="", host="h",
                                        host_ip="", proc={})
    assert quiet["handshake_hist"] == [] and quiet["handshakes"] == 0
