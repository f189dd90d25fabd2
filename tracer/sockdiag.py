"""Bytes and retransmits of connections still open, from the kernel's socket diagnostics.

The kernel program reads what a connection carried once, at its close
(tracer/bpf/phobos.c, add_totals): a pooled connection open for hours would
report none of its traffic until then, and a map built from it would show
busy edges as idle. At each drain, after the kernel's counters are read,
``OpenTotals`` asks ``NETLINK_SOCK_DIAG`` (what ``ss -ti`` reads) for the
``tcp_info`` of the TCP sockets of every network namespace the tracer
follows, and adds to each followed established connection's edge what it
carried since the last drain.

Exact over time, never counted twice: a connection the kernel program
follows from its connect or accept gets its whole totals added to its edge
at its close; what was reported for it while it was open is then taken
back from its edge's totals (its *credit*), in the drain that holds the
close. A connection that predates the tracer (found in /proc, "seeded")
gets nothing at its close, so its bytes count from the first drain that saw
it, and it has no credit. A socket that closes in the moment between the
kernel drain and the dump is gone from the dump while its close is in the
next drain: its credit waits for it (at most ``CREDIT_DRAINS`` drains, then
it is dropped and counted - a close the kernel missed never comes).

What is read per socket: ``tcpi_bytes_acked`` less the SYN of a connect
(payload the peer acknowledged, each byte once), ``tcpi_bytes_received``
and ``tcpi_total_retrans`` - the fields the close path reads from struct
tcp_sock, the same quantities. Only ESTABLISHED sockets report: in the FIN
states the sequence space holds a FIN whose accounting belongs to the close.

Cost: one dump per address family and namespace per drain - about 3 us
per socket with the parse in Python, 32 ms for 10,000 sockets on a 2-core
VM (tests/bench/bench_tracer.py prints the figure of its drain) - plus one
read of the kernel's socket table in a drain that meets a socket it does not
know yet (``Probe.followed_sockets``; ~0.1 s for 65,536 entries).

Caveats: a namespace is entered through /proc/PID/ns/net of a process the
kernel program saw in it; a namespace whose processes are all gone is
skipped until one shows. Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from tracer.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG, NLMSG_DONE, NLMSG_ERROR, in_netns, iter_messages

__all__ = ["SocketTotals", "Followed", "SockDiag", "OpenTotals", "dump_request", "parse_dump", "CREDIT_DRAINS"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
IPPROTO_TCP = 6
# <netinet/tcp.h> states
TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING = 1, 4, 5, 8, 9, 11
#: What a dump asks for: sockets that still belong to a connection (no
#: listeners, no TIME_WAIT or request minisockets: the full socket has closed).
DUMP_STATES = sum(1 << s for s in (TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT,
                                   TCP_LAST_ACK, TCP_CLOSING))

_REQ = struct.Struct("=BBBBI48x")            # struct inet_diag_req_v2, its sockid zeroed
_MSG = struct.Struct("=BBBB2s2s16s16sIII")   # inet_diag_msg up to the cookie
_MSG_LEN = 72                                # sizeof(struct inet_diag_msg)
_RTA = struct.Struct("=HH")
# struct tcp_info (uapi, stable): offsets of the fields read, and the length that holds them.
_TOTAL_RETRANS = struct.Struct("=I")
_TOTAL_RETRANS_OFF = 100
_BYTES = struct.Struct("=QQ")                # tcpi_bytes_acked, tcpi_bytes_received
_BYTES_OFF = 120
_INFO_MIN = 136

#: Drains a connection's credit waits for its close (see the module docstring).
CREDIT_DRAINS = 6


class SocketTotals(NamedTuple):
    """One socket of a dump: its 4-tuple, TCP state, cookie and totals since it was made."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    cookie: int
    bytes_acked: int
    bytes_received: int
    total_retrans: int


class Followed(NamedTuple):
    """What the kernel program knows of an open connection: its edge, and
    whether it adds the connection's totals at its close (not for one that
    predates the tracer)."""

    edge: Any
    outbound: bool
    totals_at_close: bool


def dump_request(family: int, seq: int, states: int = DUMP_STATES) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump of TCP sockets in ``states``, with their tcp_info."""
    body = _REQ.pack(family, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, states)
    return NLMSG.pack(NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


@functools.lru_cache(maxsize=65536)
def _ip_text(family: int, raw: bytes) -> str:
    # The kernel map's convention (tracer/probe.py): IPv4-mapped addresses as plain IPv4.
    # Cached: a host's sockets share a few addresses, and ipaddress is slow.
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def parse_dump(buf, length: int | None = None) -> tuple[list[SocketTotals], bool, int]:
    """The sockets of one receive of a dump: ``(sockets, done, no_info)``.

    ``done`` when the dump's NLMSG_DONE was in it; ``no_info`` counts
    sockets without a long enough tcp_info (kernels before 4.1).
    """
    out: list[SocketTotals] = []
    no_info = 0
    for mtype, _flags, start, end in iter_messages(buf, length):
        if mtype == NLMSG_DONE:
            return out, True, no_info
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", buf, start + NLMSG.size)[0]
            if err:
                raise OSError(err, f"sock_diag dump refused: {os.strerror(err)}")
            continue
        if mtype != SOCK_DIAG_BY_FAMILY or end - start < NLMSG.size + _MSG_LEN:
            continue
        body = start + NLMSG.size
        family, state, _timer, _retrans, sport, dport, src, dst, _if, c0, c1 = _MSG.unpack_from(buf, body)
        info = None
        off = body + _MSG_LEN
        while off + _RTA.size <= end:
            alen, atype = _RTA.unpack_from(buf, off)
            if alen < _RTA.size or off + alen > end:
                break
            if atype == INET_DIAG_INFO:
                info = (off + _RTA.size, alen - _RTA.size)
                break
            off += (alen + 3) & ~3
        if info is None or info[1] < _INFO_MIN:
            no_info += 1
            continue
        acked, received = _BYTES.unpack_from(buf, info[0] + _BYTES_OFF)
        (retrans,) = _TOTAL_RETRANS.unpack_from(buf, info[0] + _TOTAL_RETRANS_OFF)
        out.append(SocketTotals(_ip_text(family, bytes(src)), int.from_bytes(sport, "big"),
                                _ip_text(family, bytes(dst)), int.from_bytes(dport, "big"),
                                state, c0 | (c1 << 32), acked, received, retrans))
    return out, False, no_info


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


class SockDiag:
    """Dumps of TCP sockets with their tcp_info, one netlink socket per network namespace."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.own_netns = _netns_inode(f"{proc_root}/self/ns/net")
        self._socks: dict[int, socket.socket] = {}
        self._seq = 0
        self._buf = bytearray(1 << 16)
        self.no_info = 0

    def _open(self, netns: int, pids: Iterable[int]) -> socket.socket:
        sock = self._socks.get(netns)
        if sock is not None:
            return sock
        path = None
        if netns != self.own_netns:
            for pid in pids:
                candidate = f"{self.proc_root}/{pid}/ns/net"
                try:
                    if _netns_inode(candidate) == netns:
                        path = candidate
                        break
                except OSError:
                    continue
            else:
                raise LookupError(f"no process left in network namespace {netns}")

        def make() -> socket.socket:
            # The pid may have moved on between the stat and the setns: check where we landed.
            here = _netns_inode("/proc/thread-self/ns/net")
            if here != netns:
                raise LookupError(f"network namespace {netns} changed under its process (got {here})")
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)

        sock = self._socks[netns] = in_netns(path, make)
        return sock

    def dump(self, netns: int, pids: Iterable[int] = ()) -> list[SocketTotals]:
        """TCP sockets of namespace ``netns`` (entered through one of ``pids`` if not the tracer's own)."""
        sock = self._open(netns, pids)
        out: list[SocketTotals] = []
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                self._seq = (self._seq + 1) & 0x7FFFFFFF
                sock.send(dump_request(family, self._seq))
                while True:
                    n = sock.recv_into(self._buf)
                    got, done, no_info = parse_dump(memoryview(self._buf), n)
                    out += got
                    self.no_info += no_info
                    if done or n == 0:
                        break
        except OSError:
            self.forget(netns)
            raise
        return out

    def forget(self, netns: int) -> None:
        sock = self._socks.pop(netns, None)
        if sock is not None:
            sock.close()

    def keep_only(self, namespaces: Iterable[int]) -> None:
        """Close the sockets of namespaces no longer followed."""
        keep = set(namespaces)
        for netns in [n for n in self._socks if n not in keep]:
            self.forget(netns)

    def close(self) -> None:
        self.keep_only(())


@dataclass
class _Reported:
    followed: Followed
    sent: int
    received: int
    retrans: int


@dataclass
class OpenTotals:
    """What open connections carried since the last drain, added to their edges (see the module docstring).

    ``followed`` returns the kernel program's open connections by
    ``(netns, local ip, local port, remote ip, remote port)``
    (``Probe.followed_sockets``); ``reader`` dumps a namespace's sockets
    (``SockDiag.dump``).
    """

    followed: Callable[[], Mapping[tuple, Followed]]
    reader: Any
    stats: dict[str, float] = field(default_factory=lambda: {
        "sockets": 0, "reported": 0, "bytes": 0, "credit_dropped": 0, "namespace_errors": 0, "map_reads": 0,
        "last_s": 0.0})
    _reported: dict[tuple[int, int], _Reported] = field(default_factory=dict)
    # edge -> [sent, received, retrans, drains waited]
    _credit: dict[Any, list[int]] = field(default_factory=dict)
    _pids: dict[int, list[int]] = field(default_factory=dict)
    _known: Mapping[tuple, Followed] = field(default_factory=dict)
    # sockets a map read did not know: not worth another read each drain
    _unfollowed: set[tuple[int, int]] = field(default_factory=set)
    _drains: int = 0
    _tried: dict[int, int] = field(default_factory=dict)   # netns -> drain of the last read for it

    def adjust(self, drained: list[tuple[Any, Mapping[str, Any]]]) -> list[tuple[Any, dict[str, int]]]:
        """Entries to add to one drain's ``[(edge, values)]``: open connections'
        bytes and retransmits since the last drain, and the credit taken
        back from the closes in ``drained`` (negative, never below them)."""
        started = time.monotonic()
        namespaces = {key[0] for key in self._reported} | set(self._pids)
        # A namespace the last map read did not know (a new pod) shows first
        # in the kernel's counters: read the map again to learn how to enter it.
        # One whose connections are all short-lived may hold none at a read:
        # it is looked for again only every CREDIT_DRAINS drains.
        self._drains += 1
        active = {getattr(edge, "netns", None) for edge, _ in drained} - {None}
        new = {ns for ns in active - set(self._pids)
               if self._drains - self._tried.get(ns, -CREDIT_DRAINS) >= CREDIT_DRAINS}
        if not namespaces or not self._known or new:
            self._refresh()
            self._tried.update(dict.fromkeys(new, self._drains))
            namespaces |= set(self._pids)
        dumps: dict[int, list[SocketTotals]] = {}
        for netns in sorted(namespaces):
            try:
                dumps[netns] = self.reader.dump(netns, self._pids.get(netns, ()))
            except (OSError, LookupError):
                self.stats["namespace_errors"] += 1
        # A socket the last map read did not know: read the map again, once per socket.
        unknown = {(ns, s.cookie) for ns, sockets in dumps.items() for s in sockets
                   if s.state == TCP_ESTABLISHED and (ns, s.cookie) not in self._reported
                   and (ns, s.cookie) not in self._unfollowed
                   and (ns, s.local_ip, s.local_port, s.remote_ip, s.remote_port) not in self._known}
        if unknown:
            self._refresh()
            self._unfollowed |= unknown
            for netns in set(self._pids) - set(dumps):
                try:
                    dumps[netns] = self.reader.dump(netns, self._pids.get(netns, ()))
                except (OSError, LookupError):
                    self.stats["namespace_errors"] += 1
        extra = self._account(dumps, drained)
        if hasattr(self.reader, "keep_only"):
            self.reader.keep_only(set(self._pids) | set(dumps))
        self.stats["last_s"] = time.monotonic() - started
        return extra

    def _refresh(self) -> None:
        self._known = self.followed()
        self.stats["map_reads"] += 1
        pids: dict[int, set[int]] = {}
        for key, f in self._known.items():
            pid = getattr(f.edge, "pid", 0)
            pids.setdefault(key[0], set())
            if pid:
                pids[key[0]].add(pid)
        self._pids = {ns: sorted(p) for ns, p in pids.items()}

    def _account(self, dumps: Mapping[int, list[SocketTotals]],
                 drained: list[tuple[Any, Mapping[str, Any]]]) -> list[tuple[Any, dict[str, int]]]:
        seen: set[tuple[int, int]] = set()
        grown: dict[Any, list[int]] = {}
        for netns, sockets in dumps.items():
            self.stats["sockets"] += len(sockets)
            for s in sockets:
                ident = (netns, s.cookie)
                r = self._reported.get(ident)
                if r is None:
                    if s.state != TCP_ESTABLISHED:
                        continue
                    f = self._known.get((netns, s.local_ip, s.local_port, s.remote_ip, s.remote_port))
                    if f is None:
                        continue  # not followed (refused by a full map, or another protocol's subflow)
                    r = self._reported[ident] = _Reported(f, 0, 0, 0)
                    if not f.totals_at_close:
                        # Predates the tracer: its bytes count from now on.
                        r.sent, r.received, r.retrans = _totals(s, f.outbound)
                seen.add(ident)
                if s.state != TCP_ESTABLISHED:
                    continue  # its close reads the rest
                sent, received, retrans = _totals(s, r.followed.outbound)
                d = (max(0, sent - r.sent), max(0, received - r.received), max(0, retrans - r.retrans))
                r.sent, r.received, r.retrans = max(sent, r.sent), max(received, r.received), max(retrans, r.retrans)
                if any(d):
                    g = grown.setdefault(r.followed.edge, [0, 0, 0])
                    for i in range(3):
                        g[i] += d[i]
                    self.stats["reported"] += 1
                    self.stats["bytes"] += d[0] + d[1]
        present = {(ns, s.cookie) for ns, sockets in dumps.items() for s in sockets}
        self._unfollowed &= present
        for ident in [i for i in self._reported if i not in seen and i[0] in dumps]:
            r = self._reported.pop(ident)
            if r.followed.totals_at_close and (r.sent or r.received or r.retrans):
                c = self._credit.setdefault(r.followed.edge, [0, 0, 0, 0])
                c[0] += r.sent
                c[1] += r.received
                c[2] += r.retrans
        closed: dict[Any, list[int]] = {}
        for edge, values in drained:
            if edge in self._credit:
                k = closed.setdefault(edge, [0, 0, 0])
                k[0] += int(values.get("bytes_sent", 0))
                k[1] += int(values.get("bytes_received", 0))
                k[2] += int(values.get("retransmits", 0))
        out: list[tuple[Any, dict[str, int]]] = []
        for edge, c in list(self._credit.items()):
            k = closed.get(edge, [0, 0, 0])
            take = [min(c[i], k[i]) for i in range(3)]
            if any(take):
                out.append((edge, {"bytes_sent": -take[0], "bytes_received": -take[1], "retransmits": -take[2]}))
            for i in range(3):
                c[i] -= take[i]
            c[3] += 1
            if not any(c[:3]):
                del self._credit[edge]
            elif c[3] > CREDIT_DRAINS:
                self.stats["credit_dropped"] += c[0] + c[1]
                del self._credit[edge]
        for edge, g in grown.items():
            out.append((edge, {"bytes_sent": g[0], "bytes_received": g[1], "retransmits": g[2]}))
        return out


def _totals(s: SocketTotals, outbound: bool) -> tuple[int, int, int]:
    """Payload sent and received and segments retransmitted: what the close path reads, for an established socket."""
    sent = s.bytes_acked - 1 if outbound and s.bytes_acked else s.bytes_acked
    return sent, s.bytes_received, s.total_retrans
