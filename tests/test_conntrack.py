"""tracer/conntrack.py: NAT translations read from connection tracking.

The unit tests feed crafted netlink bytes to the parser and the per-drain
accumulation.  The ``netns`` tests build namespaces (tests/netns.py) with
nftables NAT rules like kube-proxy's and Docker's, drive real TCP connections
inside them and compare the reader's translations with what the backends
accepted.  Every virtual range is blackholed on the host that translates, so
a packet that escapes NAT is dropped there; no traffic leaves the namespaces
the test creates.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import pytest

from tracer import conntrack
from tracer.conntrack import (
    CTA_ID, CTA_PROTOINFO, CTA_STATUS, CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, IPS_DST_NAT, MSG_CT_DELETE,
    MSG_CT_NEW, NLA_F_NESTED, NLMSG_DONE, ConntrackReader, Translation, parse_entry,
)

# --- crafted messages -------------------------------------------------------------


def _attr(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _nest(atype: int, *children: bytes) -> bytes:
    return _attr(atype | NLA_F_NESTED, b"".join(children))


def _tuple(atype: int, src: str, dst: str, sport: int, dport: int, proto: int = 6) -> bytes:
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    return _nest(atype,
                 _nest(1, _attr(3 if v6 else 1, socket.inet_pton(fam, src)),
                       _attr(4 if v6 else 2, socket.inet_pton(fam, dst))),
                 _nest(2, _attr(1, bytes([proto])), _attr(2, struct.pack(">H", sport)),
                       _attr(3, struct.pack(">H", dport))))


def ct_message(orig: tuple, reply: tuple, *, ct_id: int = 1, status: int = IPS_DST_NAT, state: int | None = 3,
               proto: int = 6, mtype: int = MSG_CT_NEW, family: int = socket.AF_INET) -> bytes:
    body = _tuple(CTA_TUPLE_ORIG, *orig, proto=proto) + _tuple(CTA_TUPLE_REPLY, *reply, proto=proto)
    body += _attr(CTA_STATUS, struct.pack(">I", status))
    if state is not None:
        body += _nest(CTA_PROTOINFO, _nest(1, _attr(1, bytes([state]))))
    body += _attr(CTA_ID, struct.pack(">I", ct_id))
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), mtype, 0x2, 1, 0) + payload


DNAT = (("10.201.1.2", "10.96.0.10", 40000, 80), ("10.200.0.2", "10.201.1.2", 8080, 40000))


def test_parse_entry_reads_both_tuples_status_state_and_id():
    e = parse_entry(ct_message(*DNAT, ct_id=77))
    assert e.ct_id == 77 and e.proto == 6 and e.status == IPS_DST_NAT and e.tcp_state == 3
    assert socket.inet_ntoa(e.orig_src) == "10.201.1.2" and socket.inet_ntoa(e.orig_dst) == "10.96.0.10"
    assert (e.orig_sport, e.orig_dport, e.reply_sport, e.reply_dport) == (40000, 80, 8080, 40000)
    assert socket.inet_ntoa(e.reply_src) == "10.200.0.2"
    assert e.dnat and not e.snat


def test_parse_entry_ipv6_and_source_nat():
    e = parse_entry(ct_message(("fd00:201:1::2", "fd00:96::10", 1234, 80),
                               ("fd00:200::2", "fd00:200::1", 8080, 5555), family=socket.AF_INET6))
    assert socket.inet_ntop(socket.AF_INET6, e.reply_dst) == "fd00:200::1"
    assert e.dnat and e.snat


def test_parse_entry_without_tuples_or_with_a_bad_length_is_none():
    msg = bytearray(ct_message(*DNAT))
    assert parse_entry(bytes(msg[:20]) + _attr(CTA_STATUS, b"\0\0\0\1")) is None
    struct.pack_into("=H", msg, 20, 0xFFF0)  # first attribute claims more than the message
    assert parse_entry(bytes(msg)) is None


def test_iter_messages_walks_a_multipart_buffer_and_stops_at_a_truncated_tail():
    a, b = ct_message(*DNAT, ct_id=1), ct_message(*DNAT, ct_id=2)
    done = struct.pack("=IHHII", 20, NLMSG_DONE, 0x2, 1, 0) + b"\0" * 4
    buf = a + b + done + b[:30]
    got = list(conntrack.iter_messages(buf))
    assert [t for t, *_ in got] == [MSG_CT_NEW, MSG_CT_NEW, NLMSG_DONE]
    assert got[1][2:] == (len(a), len(a) + len(b))


def test_dump_request_is_one_tcp_filtered_get_per_family():
    req = conntrack.dump_request(socket.AF_INET6, seq=9)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, mtype, flags, seq) == (len(req), conntrack.MSG_CT_GET, 0x301, 9)
    assert req[16] == socket.AF_INET6
    assert conntrack.CTA_FILTER_F_CTA_PROTO_NUM.to_bytes(4, "little") in req
    with_status = conntrack.dump_request(socket.AF_INET, 1, conntrack.IPS_NAT_MASK, conntrack.IPS_SRC_NAT)
    assert struct.pack(">I", conntrack.IPS_NAT_MASK) in with_status


def test_event_filter_is_a_whole_program_whose_jumps_stay_inside_it():
    prog = conntrack._event_filter()
    insns = [struct.unpack_from("=HBBI", prog, o) for o in range(0, len(prog), 8)]
    assert len(prog) % 8 == 0 and insns[-1] == (0x06, 0, 0, 0) and insns[-2][3] == 0xFFFFFFFF
    for pc, (code, jt, jf, _k) in enumerate(insns):
        if code & 0x07 == 0x05:  # a jump: both targets land on an instruction
            assert pc + 1 + max(jt, jf) < len(insns)


def _accumulate(messages, cap=100, remembered=(), dump=True):
    acc = conntrack._Interval(cap, set(remembered))
    for m in messages:
        mv = memoryview(m)
        acc.take(mv, 0, len(mv), dump)
    return acc


def test_interval_counts_connections_per_backend_and_skips_untranslated_and_udp():
    msgs = [ct_message(("10.201.1.2", "10.96.0.10", 40000 + i, 80),
                       (f"10.200.0.{2 + i % 2}", "10.201.1.2", 8080, 40000 + i), ct_id=i) for i in range(5)]
    msgs.append(ct_message(("10.0.0.1", "10.0.0.2", 1, 2), ("10.0.0.2", "10.0.0.1", 2, 1), ct_id=90, status=0))
    msgs.append(ct_message(("10.0.0.1", "10.96.0.53", 3, 53), ("10.200.0.9", "10.0.0.1", 53, 3), ct_id=91, proto=17))
    acc = _accumulate(msgs)
    got = {(t.backend_ip, t.backend_port): (t.connections, t.new, t.open) for t in acc.translations()}
    assert got == {("10.200.0.2", 8080): (3, 3, 3), ("10.200.0.3", 8080): (2, 2, 2)}
    t = acc.translations()[0]
    assert (t.client_ip, t.virtual_ip, t.virtual_port, t.source_ip, t.dnat, t.snat) == \
        ("10.201.1.2", "10.96.0.10", 80, "10.201.1.2", True, False)


def test_interval_deduplicates_dump_and_event_and_remembers_the_previous_drain():
    m = ct_message(*DNAT, ct_id=5)
    closed = ct_message(*DNAT, ct_id=5, state=None, mtype=MSG_CT_DELETE)
    acc = _accumulate([m])
    acc.take(memoryview(closed), 0, len(closed), False)
    assert [(t.connections, t.new, t.open) for t in acc.translations()] == [(1, 1, 1)]
    later = _accumulate([closed], remembered=set(acc.seen), dump=False)
    assert [(t.connections, t.new, t.open) for t in later.translations()] == [(1, 0, 0)]


def test_interval_cap_counts_what_it_did_not_parse():
    msgs = [ct_message(("10.201.1.2", "10.96.0.10", 1000 + i, 80), ("10.200.0.2", "10.201.1.2", 8080, 1000 + i),
                       ct_id=i) for i in range(10)]
    acc = _accumulate(msgs, cap=4)
    assert (acc.parsed, acc.dropped) == (4, 6)
    assert sum(t.connections for t in acc.translations()) == 4


def test_translation_is_frozen_and_says_what_kind_of_nat_it_is():
    t = Translation("127.0.0.1", "127.0.0.1", 18080, "10.200.0.2", 8080, "10.200.0.1", 1, 1, 0)
    assert t.dnat and t.snat
    with pytest.raises(AttributeError):
        t.connections = 2  # type: ignore[misc]


def test_reader_refuses_a_missing_namespace_and_a_zero_cap():
    with pytest.raises(ValueError):
        ConntrackReader(max_entries=0)
    with pytest.raises(ValueError, match="no network namespace"):
        ConntrackReader("/nonexistent/ns").open()


# --- real namespaces and nftables ---------------------------------------------------

# Accepts and closes connections until stdin closes or the deadline passes,
# then prints how many it accepted.
SERVER = r"""
import select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(512)
print("ready", flush=True)
n, deadline = 0, time.monotonic() + 60
while time.monotonic() < deadline:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if s in r:
        c, _ = s.accept(); c.recv(16); c.close(); n += 1
    if sys.stdin in r:
        break
print(n, flush=True)
"""

# Connects COUNT times, one after the other; RESET closes with RST (SO_LINGER 0),
# which leaves the conntrack entry in CLOSE for only nf_conntrack_tcp_timeout_close.
CLIENT = r"""
import socket, struct, sys
host, port, count, reset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
ok = 0
for _ in range(count):
    c = socket.create_connection((host, port), timeout=5)
    c.sendall(b"x")
    if reset:
        c.recv(16)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close(); ok += 1
print(ok)
"""


def _server(host, ip, port):
    proc = host.python(SERVER, ip, str(port))
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _accepted(proc) -> int:
    proc.stdin.close()
    out = proc.stdout.readline().strip()
    proc.wait(timeout=10)
    return int(out)


def _connect(host, ip, port, count, reset=False) -> int:
    return int(host.run(sys.executable, "-c", CLIENT, ip, str(port), str(count), "1" if reset else "0",
                        timeout=60).stdout.strip())


def _by_backend(drain, **match):
    return {(t.backend_ip, t.backend_port): t for t in drain.translations
            if all(getattr(t, k) == v for k, v in match.items())}


@pytest.fixture
def topo(netns_host):
    import netns

    t = netns.Topology(3)
    hosts = t.__enter__()
    try:
        yield t, hosts
    finally:
        t.close()


CLUSTER_IP_RULES = """
table ip phobos_test {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.200.0.2 . 8080, 1 : 10.200.0.3 . 8080 }
  }
}
table ip6 phobos_test {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip6 daddr fd00:96::10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : [fd00:200::2] . 8080, 1 : [fd00:200::3] . 8080 }
  }
}
"""


@pytest.mark.netns
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_cluster_ip_to_two_backends_counts_each_backend_exactly(topo, family):
    import netns

    t, hosts = topo
    node, b1, b2 = hosts
    pod = netns.add_pod(t, node)
    netns.nft(node, CLUSTER_IP_RULES)
    netns.blackhole(node, "10.96.0.0/16", "fd00:96::/64")
    v6 = family == "ipv6"
    vip = "fd00:96::10" if v6 else "10.96.0.10"
    servers = {(b.ipv6 if v6 else b.ipv4): _server(b, b.ipv6 if v6 else b.ipv4, 8080) for b in (b1, b2)}
    with ConntrackReader(node.name) as reader:
        assert reader.netns_inode == node.netns
        assert _connect(pod, vip, 80, 10) == 10
        drain = reader.drain()
    accepted = {ip: _accepted(p) for ip, p in servers.items()}
    got = _by_backend(drain, virtual_ip=vip, virtual_port=80)
    client = pod.ipv6 if v6 else pod.ipv4
    assert {ip for ip, _ in got} == set(accepted)
    for (ip, port), tr in got.items():
        assert port == 8080 and tr.client_ip == client and tr.source_ip == client and not tr.snat
        assert tr.connections == tr.new == accepted[ip] == 5
    assert (drain.dropped, drain.truncated, drain.overruns, drain.malformed) == (0, False, 0, 0)
    assert drain.kernel_filtered


# A NodePort with externalTrafficPolicy: Cluster: DNAT to a backend on another
# host and masquerade, so the reply comes back through the node.
NODE_PORT_RULES = """
table ip phobos_test {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.200.0.1 tcp dport 30080 dnat to 10.200.0.2:8080; }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip daddr 10.200.0.2 tcp dport 8080 masquerade; }
}
"""


@pytest.mark.netns
def test_node_port_with_source_nat_reports_the_address_the_backend_sees(topo):
    import netns

    _t, hosts = topo
    node, backend, outside = hosts
    netns.nft(node, NODE_PORT_RULES)
    netns.sysctl(node, "net.ipv4.ip_forward", 1)
    server = _server(backend, backend.ipv4, 8080)
    with ConntrackReader(node.name) as reader:
        assert _connect(outside, node.ipv4, 30080, 4) == 4
        drain = reader.drain()
    assert _accepted(server) == 4
    (tr,) = drain.translations
    assert (tr.client_ip, tr.virtual_ip, tr.virtual_port, tr.backend_ip, tr.backend_port, tr.source_ip) == \
        (outside.ipv4, node.ipv4, 30080, backend.ipv4, 8080, node.ipv4)
    assert tr.dnat and tr.snat and tr.connections == tr.new == 4


@pytest.mark.netns
def test_published_port_on_loopback_is_an_output_hook_dnat(topo):
    import netns

    _t, hosts = topo
    host, container, _ = hosts
    # What a container runtime does without its userland proxy: DNAT in the
    # output hook, and masquerade, since 127.0.0.1 cannot leave the host.
    netns.nft(host, """
table ip phobos_test {
  chain out { type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.1 tcp dport 18080 dnat to 10.200.0.2:8080; }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    ip saddr 127.0.0.0/8 oifname "eth0" masquerade; }
}
""")
    netns.sysctl(host, "net.ipv4.conf.eth0.route_localnet", 1)
    server = _server(container, container.ipv4, 8080)
    with ConntrackReader(host.name) as reader:
        assert _connect(host, "127.0.0.1", 18080, 3) == 3
        drain = reader.drain()
    assert _accepted(server) == 3
    (tr,) = drain.translations
    assert (tr.client_ip, tr.virtual_ip, tr.virtual_port, tr.backend_ip, tr.backend_port, tr.source_ip) == \
        ("127.0.0.1", "127.0.0.1", 18080, container.ipv4, 8080, host.ipv4)
    assert tr.connections == 3


@pytest.mark.netns
def test_reader_outside_the_namespace_sees_nothing_of_it(topo):
    import netns

    _t, hosts = topo
    node, backend, outside = hosts
    netns.nft(node, NODE_PORT_RULES)
    netns.sysctl(node, "net.ipv4.ip_forward", 1)
    server = _server(backend, backend.ipv4, 8080)
    with ConntrackReader(outside.name) as elsewhere:
        assert _connect(outside, node.ipv4, 30080, 2) == 2
        assert elsewhere.drain().translations == ()
    _accepted(server)


@pytest.mark.netns
def test_drain_cap_counts_the_entries_it_dropped(topo):
    import netns

    _t, hosts = topo
    node, backend, outside = hosts
    netns.nft(node, NODE_PORT_RULES)
    netns.sysctl(node, "net.ipv4.ip_forward", 1)
    server = _server(backend, backend.ipv4, 8080)
    assert _connect(outside, node.ipv4, 30080, 30) == 30
    assert _accepted(server) == 30
    with ConntrackReader(node.name, max_entries=10) as reader:
        drain = reader.drain()
    assert (drain.entries, drain.dropped, drain.truncated) == (10, 20, True)
    assert sum(t.connections for t in drain.translations) == 10
    assert reader.counters["dropped"] >= 20 and reader.counters["truncated"] >= 1


@pytest.mark.netns
def test_reset_connections_gone_before_the_drain_are_counted_from_destroy_events(topo):
    """Why the reader listens to events: a dump alone misses connections closed by RST
    (or refused), whose entries live nf_conntrack_tcp_timeout_close (10 s) only."""
    import netns

    _t, hosts = topo
    node, backend, outside = hosts
    netns.nft(node, NODE_PORT_RULES)
    netns.sysctl(node, "net.ipv4.ip_forward", 1)
    netns.sysctl(node, "net.netfilter.nf_conntrack_tcp_timeout_close", 1)
    server = _server(backend, backend.ipv4, 8080)
    with ConntrackReader(node.name) as with_events, ConntrackReader(node.name, events=False) as dump_only:
        assert _connect(outside, node.ipv4, 30080, 6, reset=True) == 6
        time.sleep(2.5)  # past the CLOSE timeout: the dump no longer shows them
        from_dump = dump_only.drain()
        from_events = with_events.drain()
    assert _accepted(server) == 6
    assert from_dump.translations == ()
    (tr,) = from_events.translations
    assert tr.connections == tr.new == 6 and tr.open == 0
    assert from_events.overruns == 0


def test_fixed_layout_and_walking_parser_agree():
    msg = ct_message(*DNAT, ct_id=3)
    assert conntrack._fixed_tuples(memoryview(msg), 0, len(msg)) is not None
    # Without NLA_F_NESTED (older kernels) the fixed layout does not match.
    plain = msg.replace(struct.pack("=H", CTA_TUPLE_ORIG | NLA_F_NESTED), struct.pack("=H", CTA_TUPLE_ORIG), 1)
    assert conntrack._fixed_tuples(memoryview(plain), 0, len(plain)) is None
    assert parse_entry(plain) == parse_entry(msg)
