"""Bytes of open connections (tracer/sockdiag.py): the dump's parsing and the accounting that keeps sums exact.

The accounting runs on hand-made dumps here; tests/test_tracer_health.py
runs it against the kernel, with connections in network namespaces.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tracer import sockdiag
from tracer.netlink import NLMSG, NLMSG_DONE
from tracer.sockdiag import CREDIT_DRAINS, TCP_ESTABLISHED, TCP_FIN_WAIT1, Followed, OpenTotals, SocketTotals

EST = TCP_ESTABLISHED


def diag_message(family, state, src, sport, dst, dport, cookie, acked, received, retrans, info_len=232):
    raw = lambda ip: socket.inet_pton(family, ip).ljust(16, b"\0")  # noqa: E731
    msg = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport) + raw(src) + raw(dst)
    msg += struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32) + struct.pack("=IIIII", 0, 0, 0, 0, 1234)
    info = bytearray(info_len)
    struct.pack_into("=I", info, 100, retrans)
    if info_len >= 136:
        struct.pack_into("=QQ", info, 120, acked, received)
    attr = struct.pack("=HH", 4 + len(info), sockdiag.INET_DIAG_INFO) + bytes(info)
    body = msg + attr
    return NLMSG.pack(NLMSG.size + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_a_dump_is_parsed_into_tuples_states_cookies_and_totals():
    buf = (diag_message(socket.AF_INET, EST, "10.0.0.1", 40000, "10.0.0.2", 80, 7 << 32 | 9, 1001, 2000, 3)
           + diag_message(socket.AF_INET6, TCP_FIN_WAIT1, "::ffff:10.0.0.1", 40001, "fd00::2", 443, 5, 1, 2, 0)
           + diag_message(socket.AF_INET, EST, "10.0.0.1", 40002, "10.0.0.2", 80, 6, 1, 1, 0, info_len=104)
           + NLMSG.pack(NLMSG.size + 4, NLMSG_DONE, 2, 1, 0) + b"\0" * 4)
    sockets, done, no_info = sockdiag.parse_dump(buf)
    assert done and no_info == 1  # a kernel without the byte counters in tcp_info
    assert sockets == [
        SocketTotals("10.0.0.1", 40000, "10.0.0.2", 80, EST, 7 << 32 | 9, 1001, 2000, 3),
        SocketTotals("10.0.0.1", 40001, "fd00::2", 443, TCP_FIN_WAIT1, 5, 1, 2, 0),
    ]


def test_the_dump_request_asks_for_tcp_info_of_connected_states_only():
    req = sockdiag.dump_request(socket.AF_INET6, 42)
    length, mtype, flags, seq, _ = NLMSG.unpack_from(req)
    assert (length, mtype, seq) == (len(req), sockdiag.SOCK_DIAG_BY_FAMILY, 42) and flags & 0x300
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req, NLMSG.size)
    assert (family, proto, ext) == (socket.AF_INET6, 6, 1 << (sockdiag.INET_DIAG_INFO - 1))
    assert states & (1 << EST) and not states & (1 << 10) and not states & (1 << 6)  # no LISTEN, no TIME_WAIT


# -- the accounting ---------------------------------------------------------------------------

NS = 4026531840
OUT = ("edge", "out")
TUPLE = (NS, "10.0.0.1", 40000, "10.0.0.2", 80)


class Reader:
    """Dumps as the test sets them."""

    def __init__(self):
        self.sockets: dict[int, list[SocketTotals]] = {}

    def dump(self, netns, pids=()):
        return list(self.sockets.get(netns, []))


def sock(acked, received, retrans=0, state=EST, cookie=1, port=40000):
    return SocketTotals("10.0.0.1", port, "10.0.0.2", 80, state, cookie, acked, received, retrans)


def totals(extra):
    out = [0, 0, 0]
    for _, v in extra:
        out[0] += v["bytes_sent"]
        out[1] += v["bytes_received"]
        out[2] += v["retransmits"]
    return out


def closed(sent, received, retrans=0):
    return [(OUT, {"bytes_sent": sent, "bytes_received": received, "retransmits": retrans, "closes": 1})]


def make(followed=None, reads=None):
    reader = Reader()
    known = followed if followed is not None else {TUPLE: Followed(OUT, True, True)}

    def followed_sockets():
        if reads is not None:
            reads.append(1)
        return known
    return OpenTotals(followed_sockets, reader), reader


def test_an_open_connection_reports_what_it_carried_each_drain_and_its_close_only_the_rest():
    ot, reader = make()
    reader.sockets[NS] = [sock(1 + 1000, 500, 1)]  # bytes_acked holds the connect's SYN
    assert totals(ot.adjust([])) == [1000, 500, 1]
    reader.sockets[NS] = [sock(1 + 1500, 800, 1)]
    assert totals(ot.adjust([])) == [500, 300, 0]
    # closed: the kernel adds its whole totals; the 1500/800/1 reported are taken back
    reader.sockets[NS] = []
    drain = closed(1600, 800, 2)
    extra = ot.adjust(drain)
    assert totals(drain + extra) == [100, 0, 1]
    assert ot.adjust([]) == [] and ot.stats["credit_dropped"] == 0


def test_a_close_that_lands_in_the_next_drain_still_gets_its_credit_taken_back():
    ot, reader = make()
    reader.sockets[NS] = [sock(1 + 1000, 0)]
    ot.adjust([])
    reader.sockets[NS] = []        # gone from the dump, but its close is not in this drain
    assert totals(ot.adjust([])) == [0, 0, 0]
    drain = closed(1200, 0)
    assert totals(drain + ot.adjust(drain)) == [200, 0, 0]


def test_credit_never_drives_an_edge_below_zero_and_is_dropped_when_the_close_never_comes():
    ot, reader = make()
    reader.sockets[NS] = [sock(1 + 1000, 0)]
    ot.adjust([])
    reader.sockets[NS] = []
    drain = closed(300, 0)         # another connection's close on the same edge: 300 of the 1000 taken
    assert totals(drain + ot.adjust(drain)) == [0, 0, 0]
    for _ in range(CREDIT_DRAINS):
        ot.adjust([])
    assert ot.stats["credit_dropped"] == 700
    drain = closed(50, 0)
    assert totals(drain + ot.adjust(drain)) == [50, 0, 0]


def test_a_connection_that_predates_the_tracer_counts_from_the_first_drain_that_sees_it():
    ot, reader = make({TUPLE: Followed(OUT, True, False)})
    reader.sockets[NS] = [sock(1 + 10_000, 5_000)]
    assert totals(ot.adjust([])) == [0, 0, 0]
    reader.sockets[NS] = [sock(1 + 10_400, 5_000)]
    assert totals(ot.adjust([])) == [400, 0, 0]
    reader.sockets[NS] = []
    drain = [(OUT, {"closes": 1})]  # the kernel adds nothing at a seeded close: nothing to take back
    assert ot.adjust(drain) == []


def test_fin_states_wait_for_the_close_and_unfollowed_sockets_are_ignored_without_rereading_the_map():
    reads: list = []
    ot, reader = make(reads=reads)
    reader.sockets[NS] = [sock(1 + 100, 0), sock(999, 999, cookie=2, port=41000)]  # the second is not followed
    assert totals(ot.adjust([])) == [100, 0, 0]
    assert len(reads) == 2           # the first read, and one more for the unknown socket
    reader.sockets[NS] = [sock(1 + 300, 0, state=TCP_FIN_WAIT1), sock(2000, 2000, cookie=2, port=41000)]
    assert totals(ot.adjust([])) == [0, 0, 0]
    assert len(reads) == 2           # the unknown socket is not worth a read each drain
    reader.sockets[NS] = []
    drain = closed(301, 0)           # FIN included in sequence space, the close path takes it off
    assert totals(drain + ot.adjust(drain)) == [201, 0, 0]


def test_an_inbound_connection_counts_every_acked_byte():
    inbound = ("edge", "in")
    t = (NS, "10.0.0.2", 80, "10.0.0.1", 40000)
    ot, reader = make({t: Followed(inbound, False, True)})
    reader.sockets[NS] = [SocketTotals("10.0.0.2", 80, "10.0.0.1", 40000, EST, 3, 700, 1000, 0)]
    assert ot.adjust([]) == [(inbound, {"bytes_sent": 700, "bytes_received": 1000, "retransmits": 0})]


@pytest.mark.parametrize("failing", [OSError(1, "EPERM"), LookupError("gone")])
def test_a_namespace_that_cannot_be_read_is_counted_and_skipped(failing):
    class Broken(Reader):
        def dump(self, netns, pids=()):
            raise failing
    ot = OpenTotals(lambda: {TUPLE: Followed(OUT, True, True)}, Broken())
    assert ot.adjust([]) == [] and ot.stats["namespace_errors"] >= 1


def test_a_namespace_first_seen_in_the_kernels_counters_is_read_at_once():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Key:
        netns: int
        pid: int

    other = NS + 1
    edge = Key(other, 42)
    known: dict = {TUPLE: Followed(Key(NS, 7), True, True)}
    reads: list = []

    def followed():
        reads.append(1)
        return dict(known)
    reader = Reader()
    reader.sockets[NS] = [sock(1 + 100, 0)]
    ot = OpenTotals(followed, reader)
    ot.adjust([])
    ot.adjust([])
    assert len(reads) == 1  # every socket it sees is known: no reason to read the map again
    # a pod starts: its connect is in the kernel's counters, its socket in the map
    known[(other, "10.0.0.1", 40000, "10.0.0.2", 80)] = Followed(edge, True, True)
    reader.sockets[other] = [sock(1 + 500, 0)]
    extra = ot.adjust([(edge, {"connects": 1})])
    assert len(reads) == 2 and extra == [(edge, {"bytes_sent": 500, "bytes_received": 0, "retransmits": 0})]


def test_a_namespace_of_short_lived_connections_does_not_cost_a_map_read_each_drain():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Key:
        netns: int
        pid: int

    busy = Key(NS + 2, 9)   # its connections open and close within each interval: never in the map
    reads: list = []
    reader = Reader()
    reader.sockets[NS] = [sock(1 + 100, 0)]
    ot = OpenTotals(lambda: reads.append(1) or {TUPLE: Followed(Key(NS, 7), True, True)}, reader)
    ot.adjust([])
    for _ in range(2 * CREDIT_DRAINS):
        ot.adjust([(busy, {"connects": 5, "closes": 5})])
    assert len(reads) == 1 + 2  # the first read, then one per CREDIT_DRAINS drains for the busy namespace
