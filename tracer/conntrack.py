"""NAT translations of TCP connections, read from connection tracking.

What it reads: the connection-tracking table of one network namespace over
netlink (``NETLINK_NETFILTER``, ctnetlink).  For every TCP entry whose reply
tuple is not the mirror of its original tuple it reports

* destination NAT (kube-proxy ClusterIP/NodePort in iptables or nftables mode,
  a container runtime's published port): the original destination, i.e. the
  virtual ip:port the client's socket connected to, and the reply source, the
  backend ip:port the connection really reached;
* source NAT (masquerade, a NodePort with ``externalTrafficPolicy: Cluster``):
  the reply destination, i.e. the address the backend sees as its client.

Each :meth:`ConntrackReader.drain` returns one :class:`Translation` per
(client ip, virtual ip:port, backend ip:port, translated source ip) with how
many conntrack entries (connections) of it were seen in the interval, how
many of those were new and how many are established at the drain.

How: per drain, a dump (``IPCTNL_MSG_CT_GET`` with ``NLM_F_DUMP``) per address
family, filtered by the kernel to TCP (``CTA_FILTER``, Linux >= 5.8; older
kernels ignore the filter and userspace drops the rest).  A dump only shows
what exists at the drain: an entry that is created and destroyed between two
drains is gone by then.  Closed TCP connections linger in TIME_WAIT (120 s by
default) and are found, but a connection reset or refused is in state CLOSE
for 10 s only, and a full table evicts entries early.  So the reader also
subscribes to DESTROY events (multicast group ``NFNLGRP_CONNTRACK_DESTROY``)
from :meth:`~ConntrackReader.open` on; a classic BPF socket filter keeps only
TCP entries the kernel marked as NATed (``IPS_SRC_NAT``/``IPS_DST_NAT``), so
the rest of the host's churn never reaches the socket buffer.  Entries are
de-duplicated by conntrack id within a drain and remembered for one drain,
so an entry seen by the dump and again by its DESTROY event is one
connection, and "new" means not seen in the previous drain.  A baseline dump
at ``open()`` keeps connections that predate the reader out of "new".

Namespaces: conntrack is per network namespace.  The sockets are opened in
the namespace given as ``netns`` (a name under /run/netns or a path such as
/proc/PID/ns/net; default: the caller's), by a short-lived thread that
``setns()`` into it; a socket stays bound to the namespace it was created
in.  kube-proxy and Docker translate in the host namespace, the default for
a tracer running with ``hostNetwork``.  A pod or container that NATs inside
its own namespace needs a reader per namespace (not done here).

Cost (tests/bench/bench_conntrack.py, ~100,000 entries, one namespace,
Linux 6.18, Python 3.11): each dump walks the kernel's conntrack hash, which
all namespaces share (262,144 buckets here): ~9 ms per dump even when empty,
two dumps per drain.  Parsing is pure Python: ~8 us per NATed TCP entry,
~5 us per un-NATed one (dropped after its tuples); entries of other
protocols never leave the kernel.  Measured: 95k NATed TCP entries -> 0.8 s
CPU per drain and ~20 MiB of Python allocations; 10k NATed among 90k plain
TCP -> 0.55-0.65 s (0.2-0.26 s with ``status_filter``); 10k NATed among 90k
UDP -> 0.15 s.  ``max_entries`` bounds the entries parsed per drain; past it,
messages are only counted (~2.5 us each, ``dropped``), never parsed, and the
drain reports ``truncated``.  Events pending between drains are bounded by
the socket buffer (``rcvbuf``, 8 MiB holds ~13,000 DESTROY events); when it
overflows the kernel drops events and the next read fails with ENOBUFS,
counted in ``overruns`` (how many events were lost is unknown).

Caveats: needs CAP_NET_ADMIN in the namespace (root).  Events need
``net.netfilter.nf_conntrack_events`` != 0 (read into
:attr:`ConntrackReader.events_sysctl`); with 2, the default, the kernel arms
events only for entries created while a listener exists, so entries older
than the reader never send DESTROY events (the dump still sees them).  The
event filter relies on the NAT status bits, which nf_nat sets; IPVS (conntrack=1) rewrites the reply tuple
without them, so its short-lived entries are missed between dumps (its
entries present at a drain are still found by the dump, which compares
tuples).  Conntrack zones are ignored (entries of all zones are merged).  A
DESTROY event is sent when the kernel's garbage collector (or a dump) reaps
an expired entry, which can be an interval after the connection ended.  Conntrack ids
are 32-bit hashes; with the client port as part of the key, collisions are
negligible.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from tracer.netlink import (NLM_F_DUMP, NLM_F_DUMP_FILTERED, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG,
                            NLMSG_DONE, NLMSG_ERROR, in_netns, iter_messages)

__all__ = [
    "Translation", "Drain", "Entry", "ConntrackReader", "ConntrackError",
    "parse_entry", "iter_messages", "available",
]

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

# <linux/netlink.h> (the message framing is tracer.netlink's)
NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000

# <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
NFNL_SUBSYS_CTNETLINK = 1
NFNLGRP_CONNTRACK_DESTROY = 3
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_ID = 12
CTA_FILTER = 25
CTA_STATUS_MASK = 26
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_FILTER_ORIG_FLAGS = 1
# Not in the uapi headers (net/netfilter/nf_internals.h) but part of the ABI.
CTA_FILTER_F_CTA_PROTO_NUM = 1 << 3
# <linux/netfilter/nf_conntrack_common.h>
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
# <linux/netfilter/nf_conntrack_tcp.h>: enum tcp_conntrack
TCP_CONNTRACK_ESTABLISHED = 3

MSG_CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
MSG_CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
MSG_CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE

_NLMSG = NLMSG
_NLA = struct.Struct("=HH")       # len, type
_U16BE = struct.Struct(">H")
_U32BE = struct.Struct(">I")
_I32 = struct.Struct("=i")
_HDRLEN = _NLMSG.size + 4         # nlmsghdr + nfgenmsg

# ``new`` needs the previous drain's ids; more than this many are not kept.
_REMEMBER_MAX = 1_000_000


class ConntrackError(OSError):
    """The kernel refused a request (the errno says why) or the socket failed."""


@dataclass(frozen=True, slots=True)
class Translation:
    """Connections of one client to one virtual address that NAT sent to one backend.

    ``virtual_*`` is the original destination (what the client's socket
    shows), ``backend_*`` the reply source (where the connection went),
    ``source_ip`` the reply destination: the client's address as the backend
    sees it, equal to ``client_ip`` unless source NAT rewrote it.  Addresses
    are plain IPv4 or IPv6 text, as :mod:`ipaddress` prints them.
    """

    client_ip: str
    virtual_ip: str
    virtual_port: int
    backend_ip: str
    backend_port: int
    source_ip: str
    connections: int    # distinct conntrack entries seen in the interval
    new: int            # of those, not seen in the previous drain
    open: int           # of those, ESTABLISHED at the drain's dump

    @property
    def dnat(self) -> bool:
        return (self.virtual_ip, self.virtual_port) != (self.backend_ip, self.backend_port)

    @property
    def snat(self) -> bool:
        return self.source_ip != self.client_ip


@dataclass(frozen=True, slots=True)
class Drain:
    """What one drain found, and what it could not look at."""

    translations: tuple[Translation, ...]
    entries: int            # conntrack messages parsed (dump + events)
    nat_entries: int        # distinct NATed TCP entries among them
    dropped: int            # messages counted but not parsed: over max_entries
    truncated: bool         # max_entries was reached
    overruns: int           # ENOBUFS on the event socket: events lost, how many unknown
    malformed: int          # messages that could not be parsed
    interrupted: int        # dumps the kernel flagged inconsistent (table resized mid-dump)
    kernel_filtered: bool   # the kernel applied the TCP filter (else userspace did it all)
    seconds: float          # wall time of the drain
    cpu_seconds: float      # CPU time of the draining thread


class Entry(NamedTuple):
    """One conntrack entry, as far as translations need it (addresses as packed bytes)."""

    ct_id: int
    status: int
    proto: int
    tcp_state: int          # -1 when the message carries no TCP protoinfo (DESTROY events)
    orig_src: bytes
    orig_dst: bytes
    orig_sport: int
    orig_dport: int
    reply_src: bytes
    reply_dst: bytes
    reply_sport: int
    reply_dport: int

    @property
    def dnat(self) -> bool:
        return self.reply_src != self.orig_dst or self.reply_sport != self.orig_dport

    @property
    def snat(self) -> bool:
        return self.reply_dst != self.orig_src or self.reply_dport != self.orig_sport


def available(netns: str | None = None) -> tuple[bool, str]:
    """Whether a reader can be opened (root, ctnetlink); the reason when not."""
    try:
        with ConntrackReader(netns, events=False) as reader:
            reader.drain()
    except (OSError, ValueError) as e:
        return False, f"conntrack over netlink is not readable: {e}"
    return True, ""


# --- parsing ------------------------------------------------------------------

def _tuple(buf, off: int, end: int):
    """(src, dst, proto, sport, dport) of a CTA_TUPLE_* payload."""
    src = dst = b""
    proto = sport = dport = 0
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < 4:
            break
        atype &= NLA_TYPE_MASK
        if atype == CTA_TUPLE_IP:
            o, e = off + 4, off + alen
            while o + 4 <= e:
                ilen, itype = _NLA.unpack_from(buf, o)
                if ilen < 4:
                    break
                itype &= NLA_TYPE_MASK
                if itype == CTA_IP_V4_SRC or itype == CTA_IP_V6_SRC:
                    src = bytes(buf[o + 4:o + ilen])
                elif itype == CTA_IP_V4_DST or itype == CTA_IP_V6_DST:
                    dst = bytes(buf[o + 4:o + ilen])
                o += (ilen + 3) & ~3
        elif atype == CTA_TUPLE_PROTO:
            o, e = off + 4, off + alen
            while o + 4 <= e:
                plen, ptype = _NLA.unpack_from(buf, o)
                if plen < 4:
                    break
                ptype &= NLA_TYPE_MASK
                if ptype == CTA_PROTO_NUM:
                    proto = buf[o + 4]
                elif ptype == CTA_PROTO_SRC_PORT:
                    sport = _U16BE.unpack_from(buf, o + 4)[0]
                elif ptype == CTA_PROTO_DST_PORT:
                    dport = _U16BE.unpack_from(buf, o + 4)[0]
                o += (plen + 3) & ~3
        off += (alen + 3) & ~3
    return src, dst, proto, sport, dport


def _tcp_state(buf, off: int, end: int) -> int:
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < 4:
            break
        if atype & NLA_TYPE_MASK == CTA_PROTOINFO_TCP:
            o, e = off + 4, off + alen
            while o + 4 <= e:
                tlen, ttype = _NLA.unpack_from(buf, o)
                if tlen < 4:
                    break
                if ttype & NLA_TYPE_MASK == CTA_PROTOINFO_TCP_STATE and tlen >= 5:
                    return buf[o + 4]
                o += (tlen + 3) & ~3
        off += (alen + 3) & ~3
    return -1


def _layout(addr_len: int) -> tuple[int, tuple]:
    """The attribute headers of the two tuples as Linux writes them, and where they sit.

    ctnetlink always writes the original then the reply tuple first, each
    as IP {src, dst} then PROTO {num, sport, dport}; checking those headers
    and reading at fixed offsets is several times cheaper than walking the
    attributes.  Any other layout takes the walking parser.
    """
    a = addr_len
    src_t, dst_t = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if a == 4 else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    size = 44 + 2 * a
    checks = []
    for base, ttype in ((0, CTA_TUPLE_ORIG), (size, CTA_TUPLE_REPLY)):
        for rel, raw in ((0, _NLA.pack(size, ttype | NLA_F_NESTED) + _NLA.pack(4 + 2 * (4 + a), CTA_TUPLE_IP | NLA_F_NESTED)
                          + _NLA.pack(4 + a, src_t)),
                         (12 + a, _NLA.pack(4 + a, dst_t)),
                         (16 + 2 * a, _NLA.pack(28, CTA_TUPLE_PROTO | NLA_F_NESTED) + _NLA.pack(5, CTA_PROTO_NUM)),
                         (28 + 2 * a, _NLA.pack(6, CTA_PROTO_SRC_PORT)),
                         (36 + 2 * a, _NLA.pack(6, CTA_PROTO_DST_PORT))):
            checks.append((base + rel, base + rel + len(raw), raw))
    return size, tuple(checks)


_LAYOUTS = {socket.AF_INET: (4, *_layout(4)), socket.AF_INET6: (16, *_layout(16))}


def _fixed_tuples(buf, start: int, end: int):
    """(orig, reply, offset after them) read at fixed offsets, or None if the layout differs."""
    layout = _LAYOUTS.get(buf[start + _NLMSG.size])
    if layout is None:
        return None
    a, size, checks = layout
    base = start + _HDRLEN
    if base + 2 * size > end:
        return None
    b = bytes(buf[base:base + 2 * size])
    for lo, hi, raw in checks:
        if b[lo:hi] != raw:
            return None
    p = 16 + 2 * a
    orig = (b[12:12 + a], b[16 + a:p], b[24 + 2 * a],
            (b[p + 16] << 8) | b[p + 17], (b[p + 24] << 8) | b[p + 25])
    r = size
    reply = (b[r + 12:r + 12 + a], b[r + 16 + a:r + p], b[r + 24 + 2 * a],
             (b[r + p + 16] << 8) | b[r + p + 17], (b[r + p + 24] << 8) | b[r + p + 25])
    return orig, reply, base + 2 * size


def _mirrored(orig: tuple, reply: tuple) -> bool:
    """The reply tuple is the original one reversed: no NAT."""
    return orig[0] == reply[1] and orig[1] == reply[0] and orig[3] == reply[4] and orig[4] == reply[3]


def _entry_at(buf, start: int, end: int, fixed=None) -> Entry | None:
    """Parse the ctnetlink message at ``buf[start:end]`` (headers included).

    ``fixed`` is what :func:`_fixed_tuples` returned for it, when the caller
    already asked.
    """
    off = start + _HDRLEN
    orig = reply = None
    if fixed is None:
        fixed = _fixed_tuples(buf, start, end)
    if fixed:
        orig, reply, off = fixed
    status = ct_id = 0
    state = -1
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < 4 or off + alen > end:
            return None
        atype &= NLA_TYPE_MASK
        if atype == CTA_TUPLE_ORIG:
            orig = _tuple(buf, off + 4, off + alen)
        elif atype == CTA_TUPLE_REPLY:
            reply = _tuple(buf, off + 4, off + alen)
        elif atype == CTA_STATUS:
            status = _U32BE.unpack_from(buf, off + 4)[0]
        elif atype == CTA_ID:
            ct_id = _U32BE.unpack_from(buf, off + 4)[0]
        elif atype == CTA_PROTOINFO:
            state = _tcp_state(buf, off + 4, off + alen)
        off += (alen + 3) & ~3
    if orig is None or reply is None or not orig[0] or not orig[1] or not reply[0] or not reply[1]:
        return None
    return Entry(ct_id, status, orig[2], state, orig[0], orig[1], orig[3], orig[4],
                 reply[0], reply[1], reply[3], reply[4])


def parse_entry(message: bytes) -> Entry | None:
    """Parse one whole ctnetlink message (nlmsghdr + nfgenmsg + attributes).

    Returns None for a message that lacks the tuples this module needs.
    """
    mv = memoryview(message)
    return _entry_at(mv, 0, len(mv))


# --- requests -----------------------------------------------------------------

def _nla(atype: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def dump_request(family: int, seq: int, status_mask: int = 0, status: int = 0) -> bytes:
    """A ctnetlink dump request for one family, filtered to TCP (and to a status, if given)."""
    attrs = _nla(CTA_TUPLE_ORIG | NLA_F_NESTED,
                 _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, _nla(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))))
    attrs += _nla(CTA_FILTER | NLA_F_NESTED, _nla(CTA_FILTER_ORIG_FLAGS,
                                                  struct.pack("=I", CTA_FILTER_F_CTA_PROTO_NUM)))
    if status_mask:
        attrs += _nla(CTA_STATUS, _U32BE.pack(status)) + _nla(CTA_STATUS_MASK, _U32BE.pack(status_mask))
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _event_filter() -> bytes:
    """Classic BPF for the event socket: keep TCP entries with a NAT status bit.

    The kernel runs it before queueing, so other entries' events cost no
    socket buffer and no Python.  SKF_AD_NLATTR(_NEST) find an attribute by
    type from the offset in A (nested: inside the attribute at A) and return
    its offset, or 0.
    """
    ld_imm, ldx_imm, ld_abs_w, ld_ind_w, ld_ind_b = 0x00, 0x01, 0x20, 0x40, 0x50
    jeq, jset, tax, ret = 0x15, 0x45, 0x07, 0x06
    nlattr, nest = -0x1000 + 12, -0x1000 + 16
    prog = [
        (ld_imm, 0, 0, _HDRLEN), (ldx_imm, 0, 0, CTA_STATUS),
        (ld_abs_w, 0, 0, nlattr), (jeq, 17, 0, 0),               # no status: reject
        (tax, 0, 0, 0), (ld_ind_w, 0, 0, 4),
        (jset, 0, 14, IPS_NAT_MASK),                             # not NATed: reject
        (ld_imm, 0, 0, _HDRLEN), (ldx_imm, 0, 0, CTA_TUPLE_ORIG),
        (ld_abs_w, 0, 0, nlattr), (jeq, 10, 0, 0),
        (ldx_imm, 0, 0, CTA_TUPLE_PROTO), (ld_abs_w, 0, 0, nest), (jeq, 7, 0, 0),
        (ldx_imm, 0, 0, CTA_PROTO_NUM), (ld_abs_w, 0, 0, nest), (jeq, 4, 0, 0),
        (tax, 0, 0, 0), (ld_ind_b, 0, 0, 4),
        (jeq, 0, 1, socket.IPPROTO_TCP),
        (ret, 0, 0, 0xFFFFFFFF),
        (ret, 0, 0, 0),
    ]
    return b"".join(struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in prog)


# --- the reader -----------------------------------------------------------------

def _netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    return netns if "/" in netns else f"/run/netns/{netns}"


def _read_sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/net/netfilter/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@dataclass
class _Interval:
    """One drain's accumulation."""

    cap: int
    remembered: set
    parsed: int = 0
    dropped: int = 0
    malformed: int = 0
    interrupted: int = 0
    overruns: int = 0
    kernel_filtered: bool = False
    # (ct id, client port) -> key; keys interned, so entries of one key share it
    seen: dict = field(default_factory=dict)
    open_ids: set = field(default_factory=set)
    keys: dict = field(default_factory=dict)

    def take(self, buf, start: int, end: int, from_dump: bool) -> None:
        if self.parsed >= self.cap:
            self.dropped += 1
            return
        self.parsed += 1
        # Most entries of a busy host are not NATed: drop them before the
        # rest of the message is parsed.
        fixed = _fixed_tuples(buf, start, end)
        if fixed is not None and _mirrored(fixed[0], fixed[1]):
            return
        e = _entry_at(buf, start, end, fixed or False)
        if e is None:
            self.malformed += 1
            return
        if e.proto != socket.IPPROTO_TCP:
            return
        if e.reply_src == e.orig_dst and e.reply_sport == e.orig_dport \
                and e.reply_dst == e.orig_src and e.reply_dport == e.orig_sport:
            return
        ident = (e.ct_id, e.orig_sport)
        if from_dump and e.tcp_state == TCP_CONNTRACK_ESTABLISHED:
            self.open_ids.add(ident)
        if ident not in self.seen:
            key = (e.orig_src, e.orig_dst, e.orig_dport, e.reply_src, e.reply_sport, e.reply_dst)
            self.seen[ident] = self.keys.setdefault(key, key)

    def translations(self) -> tuple[Translation, ...]:
        counts: dict[tuple, list[int]] = {}
        for ident, key in self.seen.items():
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += ident not in self.remembered
            c[2] += ident in self.open_ids
        ip = _ip_text
        out = [Translation(ip(k[0]), ip(k[1]), k[2], ip(k[3]), k[4], ip(k[5]), *c)
               for k, c in counts.items()]
        out.sort(key=lambda t: (t.virtual_ip, t.virtual_port, t.backend_ip, t.backend_port,
                                t.client_ip, t.source_ip))
        return tuple(out)


_IP_CACHE: dict[bytes, str] = {}


def _ip_text(raw: bytes) -> str:
    text = _IP_CACHE.get(raw)
    if text is None:
        text = str(ipaddress.ip_address(raw))
        if len(_IP_CACHE) < 65536:
            _IP_CACHE[raw] = text
    return text


class ConntrackReader:
    """Reads NAT translations of TCP connections from one namespace's conntrack table.

    Parameters
    ----------
    netns : str, optional
        Name under /run/netns, or a path such as /proc/PID/ns/net; default:
        the namespace of the calling process.
    events : bool
        Subscribe to DESTROY events, so entries that come and go between two
        drains are counted (default True).
    max_entries : int
        Conntrack messages parsed per drain at most (dump and events
        together); more are counted in ``dropped`` without being parsed.
    rcvbuf : int
        Socket buffer of the event socket, in bytes (SO_RCVBUFFORCE).
    status_filter : bool
        Also ask the kernel (Linux >= 5.19) to dump only entries with a NAT
        status bit: cheaper on hosts with many un-NATed TCP entries, but
        blind to IPVS translations, which do not set them.

    Examples
    --------
    >>> with ConntrackReader() as reader:           # doctest: +SKIP
    ...     time.sleep(10)
    ...     drain = reader.drain()
    ...     for t in drain.translations:
    ...         print(t.client_ip, t.virtual_ip, t.virtual_port, "->", t.backend_ip, t.backend_port)
    """

    def __init__(self, netns: str | None = None, *, events: bool = True, max_entries: int = 100_000,
                 rcvbuf: int = 8 << 20, status_filter: bool = False) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        self.netns = netns
        self.events = events
        self.max_entries = max_entries
        self.rcvbuf = rcvbuf
        self.status_filter = status_filter
        self.netns_inode = 0
        self.events_sysctl: int | None = None
        self._path = _netns_path(netns)
        self._dump_sock: socket.socket | None = None
        self._event_sock: socket.socket | None = None
        self._buf = bytearray(1 << 20)
        self._seq = int(time.time()) & 0x7FFFFFFF
        self._remembered: set = set()
        #: Totals since open(), for the tracer's metrics.
        self.counters = {"drains": 0, "entries": 0, "dropped": 0, "truncated": 0,
                         "overruns": 0, "malformed": 0, "interrupted": 0}

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> "ConntrackReader":
        if self._dump_sock is not None:
            return self
        if self._path is not None and not os.path.exists(self._path):
            raise ValueError(f"no network namespace at {self._path}")

        def make():
            dump = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            dump.bind((0, 0))
            ev = None
            if self.events:
                ev = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
                try:
                    ev.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
                except OSError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
                    ev.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                prog = _event_filter()
                cbuf = ctypes.create_string_buffer(prog, len(prog))
                ev.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                              struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf)))
                ev.bind((0, 0))
                # Needs CAP_NET_ADMIN in the namespace: EPERM otherwise.
                ev.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_DESTROY)
                ev.setblocking(False)
            ino = os.stat("/proc/thread-self/ns/net").st_ino
            return dump, ev, ino, _read_sysctl("nf_conntrack_events")

        try:
            self._dump_sock, self._event_sock, self.netns_inode, self.events_sysctl = in_netns(self._path, make)
        except PermissionError as e:
            raise ConntrackError(errno.EPERM, f"reading conntrack needs CAP_NET_ADMIN (run as root): {e}") from e
        # Baseline: ids of what exists now, so the first drain's "new" counts
        # only connections made after open().
        base = _Interval(self.max_entries, set())
        self._dump_all(base)
        self._remembered = set(base.seen)
        return self

    def close(self) -> None:
        for s in (self._dump_sock, self._event_sock):
            if s is not None:
                s.close()
        self._dump_sock = self._event_sock = None

    def __enter__(self) -> "ConntrackReader":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- drains -----------------------------------------------------------------

    def drain(self) -> Drain:
        """Dump the table, read the pending events, and return the interval's translations."""
        if self._dump_sock is None:
            raise ValueError("ConntrackReader.drain() before open()")
        t0, c0 = time.perf_counter(), time.thread_time()
        acc = _Interval(self.max_entries, self._remembered)
        self._dump_all(acc)
        if self._event_sock is not None:
            self._read_events(acc)
        translations = acc.translations()
        self._remembered = set(acc.seen) if len(acc.seen) <= _REMEMBER_MAX else set()
        result = Drain(translations=translations, entries=acc.parsed, nat_entries=len(acc.seen),
                       dropped=acc.dropped, truncated=acc.dropped > 0, overruns=acc.overruns,
                       malformed=acc.malformed, interrupted=acc.interrupted,
                       kernel_filtered=acc.kernel_filtered,
                       seconds=time.perf_counter() - t0, cpu_seconds=time.thread_time() - c0)
        c = self.counters
        c["drains"] += 1
        c["entries"] += result.entries
        c["dropped"] += result.dropped
        c["truncated"] += result.truncated
        c["overruns"] += result.overruns
        c["malformed"] += result.malformed
        c["interrupted"] += result.interrupted
        return result

    def _dump_all(self, acc: _Interval) -> None:
        if self.status_filter:
            # Two dumps per family: DNAT (with or without SNAT), then SNAT only.
            filters = ((IPS_DST_NAT, IPS_DST_NAT), (IPS_NAT_MASK, IPS_SRC_NAT))
        else:
            filters = ((0, 0),)
        for family in (socket.AF_INET, socket.AF_INET6):
            for mask, value in filters:
                self._dump(family, acc, mask, value)

    def _dump(self, family: int, acc: _Interval, mask: int, value: int) -> None:
        sock = self._dump_sock
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        sock.send(dump_request(family, self._seq, mask, value))
        buf, mv = self._buf, memoryview(self._buf)
        while True:
            n = sock.recv_into(buf)
            for mtype, mflags, start, end in iter_messages(mv, n):
                if mtype == NLMSG_DONE:
                    if mflags & NLM_F_DUMP_INTR:
                        acc.interrupted += 1
                    return
                if mtype == NLMSG_ERROR:
                    err = -_I32.unpack_from(mv, start + _NLMSG.size)[0]
                    if err == 0:
                        continue
                    raise ConntrackError(err, f"conntrack dump refused: {os.strerror(err)}")
                if mflags & NLM_F_DUMP_FILTERED:
                    acc.kernel_filtered = True
                if mflags & NLM_F_DUMP_INTR:
                    acc.interrupted += 1
                if mtype == MSG_CT_NEW or mtype == MSG_CT_GET:
                    acc.take(mv, start, end, True)

    def _read_events(self, acc: _Interval) -> None:
        # Bounded by the socket buffer: what is queued now, plus what arrives
        # while reading, until the queue is empty.
        sock = self._event_sock
        buf, mv = self._buf, memoryview(self._buf)
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    acc.overruns += 1
                    continue
                raise
            for mtype, _flags, start, end in iter_messages(mv, n):
                if mtype == MSG_CT_DELETE or mtype == MSG_CT_NEW:
                    acc.take(mv, start, end, False)
