"""Load the Phobos BPF program and read its maps (the only BCC importer).

What it does: compiles ``tracer/bpf/phobos.c`` with BCC, attaches it to the
raw tracepoint ``inet_sock_set_state`` and, where the kernel allows, to
``tcp_v4_connect``/``tcp_v6_connect``/``inet_csk_accept`` through fentry or
kprobes, and gives the agent plain Python values out of the maps.

How: the raw tracepoint passes only the socket pointer and the two states,
so the program reads the 4-tuple, family, protocol and
``sk->__sk_common.skc_net->ns.inum`` from the socket, and at an established
connection's close a few ``struct tcp_sock`` counters (bytes acknowledged
and received, retransmitted segments, and what corrects them for SYN and
FIN: ``snd_una``, ``write_seq``, the ``SOCK_DONE`` bit of ``sk_flags``).
Kernel headers may not match the running kernel, so the byte offsets (and
the bit number) come from the kernel's own BTF (``/sys/kernel/btf/vmlinux``,
parsed here; about 0.2 s) and are passed to the compiler as ``-D`` flags; the C code never dereferences a kernel struct
through a header layout.  The program's own constants (map slots,
directions, map sizes) are read from its ``#define`` lines at import, so the
C file is their one source.

Cost: compiling takes a second or two of CPU at start-up (clang); after that
the only work is one drain per interval: a walk of the edge-id map when the
kernel handed out ids since the last drain, one batched read of the edges'
counters per 512 ids (their range stays low: freed ids are handed out
first), and per edge a hash of its bytes, summed over the CPUs only when it
moved - independent of how many connections the edge saw.  Retiring an
idle edge is two syscalls, giving its id back two more.  Reading the socket
table (reconciliation, and the open connections' totals) reads its buckets
in batches of 1024 per syscall.

Caveats: modes other than ``tracepoint`` need kprobes or BPF trampolines;
kernels built without kprobes or locked down refuse them, and the error says
so.  ``auto`` first asks the kernel with an empty fentry program, loaded
with bpf(2) directly (a millisecond: where the kernel refuses fentry, as
under lockdown, that saves a compile of about a second), then tries each
mode in a forked child whose stderr goes to a scratch file: libbcc writes
every refused load ("bpf: Failed to load program: ...") straight to file
descriptor 2, which would read like a failure of Phobos.
The outcome is one log line in Phobos' words (the mode, and why each other
mode was not used); BCC's raw text is logged at debug level.  The real load
is never silenced: if it fails, BCC's messages and the error are shown.
"""

from __future__ import annotations

import ctypes as ct
import errno
import functools
import ipaddress
import logging
import os
import re
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = [
    "ProbeError",
    "KernelOffsets",
    "SockOffsets",
    "BPF_CONSTANTS",
    "bpf_constants",
    "EdgeKey",
    "Btf",
    "kernel_offsets",
    "import_bcc",
    "Probe",
    "MODES",
]

log = logging.getLogger("phobos.tracer.probe")

MODES = ("auto", "tracepoint", "kprobe", "fentry")
BPF_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "phobos.c")
STATE_TRACEPOINT = "inet_sock_set_state"
# An edge id whose counters stood still for this many drains, with no
# socket entry holding it, is retired (its key unmapped, then its id given
# back a drain later); 1 once fewer than an eighth of the ids are left.
RETIRE_IDLE_DRAINS = 3


class ProbeError(RuntimeError):
    """A probe could not be loaded or attached; the message says why and what to do.

    ``reason`` is the why alone (no mode, no advice), for the one line that
    ``auto`` logs about the modes it did not use.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Z][A-Z0-9_]*)[ \t]+(0x[0-9a-fA-F]+|[0-9]+)\b", re.M)


def bpf_constants(path: str = BPF_SOURCE) -> dict[str, int]:
    """The integer ``#define`` lines of the C program (the defaults of ``#ifndef`` blocks included)."""
    with open(path) as fh:
        return {name: int(value, 0) for name, value in _DEFINE.findall(fh.read())}


def _slot_names(consts: dict[str, int], prefix: str) -> tuple[str, ...]:
    """Names of the slots ``PREFIX_NAME`` 0..PREFIX_SLOTS-1, lower case, in slot order."""
    slots = {v: k[len(prefix):].lower() for k, v in consts.items()
             if k.startswith(prefix) and k != prefix + "SLOTS"}
    if sorted(slots) != list(range(consts[prefix + "SLOTS"])):
        raise ProbeError(f"{BPF_SOURCE}: {prefix}* slots are not 0..{prefix}SLOTS-1: {slots}")
    return tuple(slots[i] for i in sorted(slots))


BPF_CONSTANTS = bpf_constants()
DIRECTIONS = {BPF_CONSTANTS["DIR_OUTBOUND"]: "outbound", BPF_CONSTANTS["DIR_INBOUND"]: "inbound"}
DIRECTION_IDS = {name: value for value, name in DIRECTIONS.items()}
CLOCK_MONOTONIC_COARSE = 6  # Linux; the time module does not name it
DROP_NAMES = _slot_names(BPF_CONSTANTS, "DROP_")
STAT_NAMES = _slot_names(BPF_CONSTANTS, "STAT_")
CONFIG_NAMES = _slot_names(BPF_CONSTANTS, "CFG_")
HS_BUCKETS = BPF_CONSTANTS["HS_BUCKETS"]
#: struct sock_state of phobos.c: edge id, established, start (jiffies), SYN time, ports, outbound.
_SOCK_STATE = struct.Struct("<IIQQHHB3x")
_SOCK_OWNER = struct.Struct("<Q")


def sock_bucket_bits(max_socks: int) -> int:
    """log2 of the socket table's buckets: room for ``max_socks`` entries (a power of two), at least 2 buckets."""
    ways = BPF_CONSTANTS["SOCK_WAYS"]
    buckets = max(2, -(-int(max_socks) // ways))
    return (buckets - 1).bit_length()


def _ctype_format(ctype) -> str:
    """The struct module's format of a ctypes structure of integers and integer arrays (no padding)."""
    out = "<"
    for _, kind in ctype._fields_:
        count = getattr(kind, "_length_", 0)
        elem = kind._type_ if count else kind
        code = "BHIQ"[(ct.sizeof(elem)).bit_length() - 1]
        if elem._type_ in "bhilq":  # a signed ctypes type
            code = code.lower()
        out += f"{count}{code}" if count else code
    if struct.calcsize(out) != ct.sizeof(ctype):
        raise ProbeError(f"struct {ctype.__name__}: cannot mirror its layout ({out})")
    return out


@dataclass
class _Edge:
    """What userspace keeps of one edge id between drains."""

    key: "EdgeKey"
    comm: str
    sums: tuple = ()        # the counters summed over CPUs at the last drain (cumulative)
    digest: int = 0         # hash of their raw per-CPU bytes, to pass over an idle edge cheaply
    idle: int = 0           # drains without a change
    retired_at: int = -1    # the drain that unmapped its key (-1: mapped)


def tick_ns() -> int:
    """Length of a jiffy in ns, the unit of the kernel's durations.

    The resolution of CLOCK_MONOTONIC_COARSE is one tick (the kernel's
    TICK_NSEC); no privilege or kernel configuration file is needed.
    """
    return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)


def _mode_error(mode: str, reason: str) -> ProbeError:
    hint = "; use --mode tracepoint" if mode != "tracepoint" else ""
    return ProbeError(f"{mode} mode: {reason}{hint}", reason=reason)


# What libbcc prints to stderr when the kernel refuses a program (src/cc/libbpf.c).
_BCC_LOAD_FAILED = re.compile(r"^bpf: Failed to load program: (.+)$", re.M)


@dataclass(frozen=True)
class SockOffsets:
    """Where the raw tracepoint program finds a socket's fields, in bytes from ``struct sock``.

    All but ``protocol`` lie in struct sock_common, which leads struct sock;
    ``head_len`` is how many leading bytes the program reads in one go to
    get all of them.
    """

    protocol: int
    addrs: int          # skc_daddr, then skc_rcv_saddr
    dport: int
    family: int
    v6_daddr: int
    v6_rcv_saddr: int
    net: int
    num: int
    sport: int          # inet_sock.inet_sport: kept at CLOSE, where unhashing zeroes skc_num
    # read at an established connection's close (see add_totals in phobos.c):
    # struct tcp_sock's counters in sequence space, less SYN and FINs
    bytes_acked: int
    snd_una: int
    write_seq: int
    bytes_received: int
    total_retrans: int
    # tcp_sock.tcp_clock_cache: the clock (ns) the kernel read on taking in
    # the SYN-ACK, just before the socket became ESTABLISHED
    clock_cache: int
    flags: int          # sock_common.skc_flags (sk_flags)
    done_bit: int       # enum sock_flags: SOCK_DONE

    @property
    def head_len(self) -> int:
        ends = (self.addrs + 8, self.dport + 2, self.family + 2, self.v6_daddr + 16,
                self.v6_rcv_saddr + 16, self.net + 8, self.num + 2)
        return (max(ends) + 7) // 8 * 8


@dataclass(frozen=True)
class KernelOffsets:
    skc_net: int
    net_ns_inum: int
    skc_num: int
    accept_nargs: int
    sock: SockOffsets | None = None
    sock_missing: str = ""      # why ``sock`` is None: what the BTF lacks
    # BTF id of the tracepoint's typedef btf_trace_inet_sock_set_state: what a
    # BTF-typed raw tracepoint program attaches to (0: none in this BTF)
    state_tp_btf_id: int = 0
    # BTF id of the function tcp_v4_connect: what fentry mode attaches to
    connect_btf_id: int = 0
    # BTF ids of struct tcp_sock and of the kfunc bpf_rdonly_cast (Linux
    # 6.2+), through which the BTF-typed program reads tcp_sock's fields
    # without a helper call (0: not in this BTF; see link_tcp_sock_casts)
    tcp_sock_btf_id: int = 0
    rdonly_cast_btf_id: int = 0

    def cflags(self) -> list[str]:
        flags = [
            f"-DSKC_NET_OFF={self.skc_net}",
            f"-DNET_NS_INUM_OFF={self.net_ns_inum}",
            f"-DSKC_NUM_OFF={self.skc_num}",
            f"-DACCEPT_NARGS={self.accept_nargs}",
            f"-DTCP_SOCK_BTF_ID={self.tcp_sock_btf_id}",
        ]
        if self.sock is not None:
            s = self.sock
            flags += [f"-DSK_PROTOCOL_OFF={s.protocol}", f"-DSKC_ADDRS_OFF={s.addrs}",
                      f"-DSKC_DPORT_OFF={s.dport}", f"-DSKC_FAMILY_OFF={s.family}",
                      f"-DSKC_V6_DADDR_OFF={s.v6_daddr}", f"-DSKC_V6_RCV_SADDR_OFF={s.v6_rcv_saddr}",
                      f"-DINET_SPORT_OFF={s.sport}", f"-DSKC_HEAD_LEN={s.head_len}",
                      f"-DTCP_BYTES_ACKED_OFF={s.bytes_acked}", f"-DTCP_SND_UNA_OFF={s.snd_una}",
                      f"-DTCP_WRITE_SEQ_OFF={s.write_seq}",
                      f"-DTCP_BYTES_RECEIVED_OFF={s.bytes_received}",
                      f"-DTCP_TOTAL_RETRANS_OFF={s.total_retrans}", f"-DSK_FLAGS_OFF={s.flags}",
                      f"-DTCP_CLOCK_CACHE_OFF={s.clock_cache}",
                      f"-DSOCK_DONE_BIT={s.done_bit}"]
        return flags


@dataclass(frozen=True)
class EdgeKey:
    """One per-edge counter key, as the kernel aggregates it."""

    netns: int
    pid: int
    direction: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int


# --------------------------------------------------------------------------
# BTF
#
# The kernel's BTF blob (/sys/kernel/btf/vmlinux) is read directly: a header,
# then type records, then a string table.  Only the record sizes of each kind
# and the member lists of structs, unions and function prototypes are needed.

BTF_MAGIC = 0xEB9F
_KIND_STRUCT, _KIND_UNION, _KIND_ENUM, _KIND_TYPEDEF, _KIND_FUNC, _KIND_FUNC_PROTO = 4, 5, 6, 8, 12, 13
_KIND_MODIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag
# Bytes that follow the 12-byte common record, per kind: (fixed, per vlen item).
_KIND_EXTRA = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
               8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
               15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12)}


class Btf:
    """Just enough of a BTF blob to find member offsets and function arities."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ProbeError("kernel BTF is truncated")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise ProbeError("kernel BTF has a bad magic number (big-endian kernels are not supported)")
        type_off, type_len, str_off, _str_len = struct.unpack_from("<IIII", data, 8)
        self.data = data
        self._strings = hdr_len + str_off
        # type id -> (kind, name_off, size_or_type, items_pos, vlen, kind_flag)
        self.types: dict[int, tuple[int, int, int, int, int, int]] = {}
        pos, end, tid = hdr_len + type_off, hdr_len + type_off + type_len, 1
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, size_type = unpack("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            extra = _KIND_EXTRA.get(kind)
            if extra is None:
                raise ProbeError(f"kernel BTF has type kind {kind} this Phobos does not know")
            if kind in (_KIND_STRUCT, _KIND_UNION, _KIND_ENUM, _KIND_FUNC_PROTO, _KIND_FUNC) or \
                    kind in _KIND_MODIFIERS:
                self.types[tid] = (kind, name_off, size_type, pos, vlen, info >> 31)
            pos += extra[0] + extra[1] * vlen
            tid += 1

    def name(self, off: int) -> str:
        start = self._strings + off
        return self.data[start:self.data.index(b"\0", start)].decode()

    def _find(self, kind: int, name: str) -> int:
        want = name.encode() + b"\0"
        for tid, (k, name_off, _, _, vlen, _) in self.types.items():
            start = self._strings + name_off
            if k == kind and (vlen or kind in (_KIND_FUNC, _KIND_TYPEDEF)) and \
                    self.data[start:start + len(want)] == want:
                return tid
        return 0

    def _resolve(self, tid: int) -> int:
        for _ in range(32):
            t = self.types.get(tid)
            if t is None or t[0] not in _KIND_MODIFIERS:
                return tid
            tid = t[2]
        return tid

    def members(self, tid: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of a struct or union."""
        kind, _, _, pos, vlen, kflag = self.types[tid]
        out = []
        for i in range(vlen):
            name_off, mtype, offset = struct.unpack_from("<III", self.data, pos + 12 * i)
            out.append((self.name(name_off), mtype, offset & 0xFFFFFF if kflag else offset))
        return out

    def member_offset(self, tid: int, member: str) -> int | None:
        """Byte offset of ``member``, looking into anonymous unions and structs."""
        tid = self._resolve(tid)
        t = self.types.get(tid)
        if t is None or t[0] not in (_KIND_STRUCT, _KIND_UNION):
            return None
        members = self.members(tid)
        for name, _, bits in members:
            if name == member:
                return bits // 8
        for name, mtype, bits in members:
            if name == "":
                inner = self.member_offset(mtype, member)
                if inner is not None:
                    return bits // 8 + inner
        return None

    def offset(self, struct_name: str, member: str) -> int:
        tid = self._find(_KIND_STRUCT, struct_name)
        if not tid:
            raise ProbeError(f"kernel BTF has no struct {struct_name}")
        value = self.member_offset(tid, member)
        if value is None:
            raise ProbeError(f"kernel BTF: struct {struct_name} has no member {member}")
        return value

    def is_bitfield(self, struct_name: str, member: str) -> bool:
        """Whether a direct member of a struct is a bitfield (kind_flag set and a bit size)."""
        tid = self._find(_KIND_STRUCT, struct_name)
        if not tid:
            raise ProbeError(f"kernel BTF has no struct {struct_name}")
        kind, _, _, pos, vlen, kflag = self.types[tid]
        for i in range(vlen):
            name_off, _mtype, offset = struct.unpack_from("<III", self.data, pos + 12 * i)
            if self.name(name_off) == member:
                return bool(kflag and offset >> 24)
        raise ProbeError(f"kernel BTF: struct {struct_name} has no member {member}")

    def enum_value(self, enum_name: str, member: str) -> int:
        """Value of one enumerator of a (32-bit) enum."""
        tid = self._find(_KIND_ENUM, enum_name)
        if not tid:
            raise ProbeError(f"kernel BTF has no enum {enum_name}")
        _, _, _, pos, vlen, _ = self.types[tid]
        for i in range(vlen):
            name_off, value = struct.unpack_from("<Ii", self.data, pos + 8 * i)
            if self.name(name_off) == member:
                return value
        raise ProbeError(f"kernel BTF: enum {enum_name} has no {member}")

    def typedef_id(self, name: str) -> int:
        """Type id of a typedef, 0 if there is none."""
        return self._find(_KIND_TYPEDEF, name)

    def struct_id(self, name: str) -> int:
        """Type id of a struct, 0 if there is none."""
        return self._find(_KIND_STRUCT, name)

    def func_id(self, name: str) -> int:
        """Type id of a kernel function, 0 if there is none."""
        return self._find(_KIND_FUNC, name)

    def func_nargs(self, name: str) -> int | None:
        tid = self._find(_KIND_FUNC, name)
        proto = self.types.get(self.types[tid][2]) if tid else None
        return proto[4] if proto is not None else None


def _sock_offsets(b: Btf, sock_common: int) -> SockOffsets:
    def common(member: str) -> int:
        return sock_common + b.offset("sock_common", member)

    if b.is_bitfield("sock", "sk_protocol"):
        raise ProbeError("this kernel's struct sock has sk_protocol in a bitfield (Linux < 5.6); "
                         "Phobos needs Linux 5.6 or later")
    for member in ("bytes_acked", "snd_una", "write_seq", "bytes_received", "total_retrans", "tcp_clock_cache"):
        if b.is_bitfield("tcp_sock", member):
            raise ProbeError(f"this kernel's struct tcp_sock has {member} in a bitfield")
    addrs = common("skc_daddr")
    if common("skc_rcv_saddr") != addrs + 4:
        raise ProbeError("kernel BTF: skc_rcv_saddr does not follow skc_daddr in struct sock_common")
    return SockOffsets(protocol=b.offset("sock", "sk_protocol"), addrs=addrs, dport=common("skc_dport"),
                       family=common("skc_family"), v6_daddr=common("skc_v6_daddr"),
                       v6_rcv_saddr=common("skc_v6_rcv_saddr"), net=common("skc_net"), num=common("skc_num"),
                       sport=b.offset("inet_sock", "inet_sport"),
                       bytes_acked=b.offset("tcp_sock", "bytes_acked"),
                       snd_una=b.offset("tcp_sock", "snd_una"), write_seq=b.offset("tcp_sock", "write_seq"),
                       bytes_received=b.offset("tcp_sock", "bytes_received"),
                       total_retrans=b.offset("tcp_sock", "total_retrans"),
                       clock_cache=b.offset("tcp_sock", "tcp_clock_cache"),
                       flags=common("skc_flags"), done_bit=b.enum_value("sock_flags", "SOCK_DONE"))


def kernel_offsets(btf: bytes) -> KernelOffsets:
    """The struct offsets phobos.c needs, from a BTF blob of the running kernel.

    What the raw tracepoint reads of a socket is in ``sock``; a BTF without
    those members still gives the namespace offsets (``sock_missing`` says
    what it lacks, and loading the program refuses it with that reason).
    """
    b = Btf(btf)
    sock_common = b.offset("sock", "__sk_common")
    core = dict(
        skc_net=sock_common + b.offset("sock_common", "skc_net"),
        net_ns_inum=b.offset("net", "ns") + b.offset("ns_common", "inum"),
        skc_num=sock_common + b.offset("sock_common", "skc_num"),
        accept_nargs=b.func_nargs("inet_csk_accept") or 2,
        state_tp_btf_id=b.typedef_id("btf_trace_" + STATE_TRACEPOINT),
        connect_btf_id=b.func_id("tcp_v4_connect"),
        tcp_sock_btf_id=b.struct_id("tcp_sock"),
        rdonly_cast_btf_id=b.func_id("bpf_rdonly_cast"),
    )
    try:
        return KernelOffsets(**core, sock=_sock_offsets(b, sock_common))
    except ProbeError as err:
        return KernelOffsets(**core, sock_missing=str(err))


def read_btf(path: str = "/sys/kernel/btf/vmlinux") -> bytes:
    """The kernel's BTF blob."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ProbeError(f"{path} is missing: this kernel has no BTF "
                         "(a kernel built with CONFIG_DEBUG_INFO_BTF=y is required)") from None
    except OSError as err:
        raise ProbeError(f"cannot read kernel BTF {path}: {err.strerror}") from None


# --------------------------------------------------------------------------
# BCC

def import_bcc():
    """Import BCC's Python module, also from Debian's dist-packages."""
    try:
        import bcc  # noqa: PLC0415 - the only BCC import in Phobos
        return bcc
    except ImportError:
        pass
    path = "/usr/lib/python3/dist-packages"
    if path not in sys.path and os.path.isdir(path):
        sys.path.append(path)
        try:
            import bcc  # noqa: PLC0415
            return bcc
        except ImportError:
            pass
    raise ProbeError("BCC not installed: apt-get install python3-bpfcc "
                     "(and run Phobos with a Python that sees /usr/lib/python3/dist-packages)")


def _ip(raw: Iterable[int]) -> str:
    return _ip_text(bytes(raw))


@functools.lru_cache(maxsize=4096)
def _ip_text(raw: bytes) -> str:
    # Cached: reading a full socket table converts the same few addresses tens of thousands of times.
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def _ip_bytes(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def verify_call_probes(offsets: KernelOffsets | None = None) -> list[str]:
    """Compile the kprobe-mode programs and load them into the verifier, without attaching.

    Lets a kernel without kprobes still check that the kprobe code is valid.
    Returns the names of the programs the kernel accepted.
    """
    bcc = import_bcc()
    offsets = offsets or kernel_offsets(read_btf())
    if offsets.sock is None:
        raise ProbeError(f"cannot read sockets from the raw tracepoint: {offsets.sock_missing}")
    bpf = bcc.BPF(src_file=BPF_SOURCE.encode(), cflags=offsets.cflags() + ["-DPHOBOS_CALL_PROBES", "-w"])
    try:
        names = ["phobos_connect_enter", "phobos_connect_return", "phobos_accept_return"]
        for name in names:
            bpf.load_func(name.encode(), bcc.BPF.KPROBE)
        return names
    finally:
        bpf.cleanup()


# bpf(2): the commands, program type and attach type a BTF-typed raw
# tracepoint needs, which BCC 0.26 does not load by itself.
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_TRACE_RAW_TP, _BPF_TRACE_FENTRY = 26, 23, 24
#: r0 = 0; exit: a program that does nothing, to ask the kernel what it allows.
_RETURN_0 = bytes.fromhex("b700000000000000" "9500000000000000")


def _sys_bpf(cmd: int, attr: ct.Array) -> tuple[int, int]:
    """(return value, errno) of one bpf(2) call."""
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        return -1, 38  # ENOSYS: not wired for this architecture here
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    ret = libc.syscall(ct.c_long(nr), ct.c_int(cmd), attr, ct.c_uint(len(attr)))
    return int(ret), ct.get_errno()


def _load_tracing(insns: bytes, btf_id: int, name: str, attach_type: int) -> int:
    """Load instructions as a BPF_PROG_TYPE_TRACING program for the BTF id; its fd.

    Raises ProbeError with the verifier's last lines when the kernel refuses.
    """
    code = ct.create_string_buffer(insns, len(insns))
    license_ = ct.create_string_buffer(b"GPL")
    log = ct.create_string_buffer(1 << 20)

    def load(log_level: int) -> tuple[int, int]:
        attr = ct.create_string_buffer(128)
        # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        # log_size, log_buf, kern_version, prog_flags, prog_name, prog_ifindex,
        # expected_attach_type, prog_btf_fd, func_info_rec_size, func_info, func_info_cnt,
        # line_info_rec_size, line_info, line_info_cnt, attach_btf_id
        struct.pack_into("<IIQQIIQII16sIIIIQIIQII", attr, 0, _BPF_PROG_TYPE_TRACING, len(insns) // 8,
                         ct.addressof(code), ct.addressof(license_), log_level,
                         len(log) if log_level else 0, ct.addressof(log) if log_level else 0, 0, 0,
                         name.encode()[:15], 0, attach_type, 0, 0, 0, 0, 0, 0, 0, btf_id)
        return _sys_bpf(_BPF_PROG_LOAD, attr)

    # Without a log first: a verifier log that outgrows its buffer fails
    # the load (ENOSPC) however good the program; the log is only wanted
    # to say why a program was refused.
    prog_fd, err = load(0)
    if prog_fd < 0:
        retry_fd, retry_err = load(1)
        if retry_fd >= 0:
            prog_fd = retry_fd
        elif retry_err != errno.ENOSPC:
            err = retry_err
    if prog_fd < 0:
        tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-3:])
        why = os.strerror(err) + (f": {tail}" if tail else "")
        raise ProbeError(f"the kernel refused the program ({why})", reason=why)
    return prog_fd


def _attach_tracing(prog_fd: int) -> int:
    """Attach a loaded tracing program to the BTF id it was loaded for; the link's fd."""
    open_attr = ct.create_string_buffer(16)
    struct.pack_into("<QI", open_attr, 0, 0, prog_fd)   # name 0: the target is the BTF id
    link_fd, err = _sys_bpf(_BPF_RAW_TRACEPOINT_OPEN, open_attr)
    if link_fd < 0:
        os.close(prog_fd)
        raise ProbeError(f"could not attach it: {os.strerror(err)}", reason=os.strerror(err))
    return link_fd


_BPF_CALL = 0x85                # BPF_JMP | BPF_CALL
_BPF_PSEUDO_KFUNC_CALL = 2
_BPF_FUNC_SKC_TO_TCP_SOCK = 137


def link_tcp_sock_casts(insns: bytes, rdonly_cast_btf_id: int = 0) -> bytes:
    """The program with its calls to TCP_SOCK_CAST_CALL (phobos.c) linked: to the kfunc
    bpf_rdonly_cast when its BTF id is given, else to the helper bpf_skc_to_tcp_sock.

    BCC cannot compile a kfunc call, so phobos.c calls a helper number no
    kernel has; both targets take the socket in r1 (the kfunc the type's BTF
    id in r2, which the helper ignores) and give a struct tcp_sock pointer.
    """
    mark = BPF_CONSTANTS["TCP_SOCK_CAST_CALL"]
    # struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm;}
    # in the host's byte order, whose bitfields fill the byte from the low
    # bits on little-endian hosts and from the high bits on big-endian ones.
    little = sys.byteorder == "little"
    insn = struct.Struct("<BBhi" if little else ">BBhi")
    src_shift = 4 if little else 0
    out = bytearray(insns)
    for pos in range(0, len(out) - 7, 8):
        code, regs, _off, imm = insn.unpack_from(out, pos)
        if code != _BPF_CALL or (regs >> src_shift) & 0xF or imm != mark:
            continue
        if rdonly_cast_btf_id:
            insn.pack_into(out, pos, code, regs | _BPF_PSEUDO_KFUNC_CALL << src_shift, 0, rdonly_cast_btf_id)
        else:
            insn.pack_into(out, pos, code, regs, 0, _BPF_FUNC_SKC_TO_TCP_SOCK)
    return bytes(out)


def attach_btf_raw_tracepoint(insns: bytes, btf_id: int, name: str) -> tuple[int, int]:
    """Load BCC-compiled instructions as a BTF-typed raw tracepoint and attach them.

    Returns (program fd, attachment fd); closing the attachment fd detaches.
    Raises ProbeError with the verifier's last lines when the kernel refuses.
    """
    try:
        prog_fd = _load_tracing(insns, btf_id, name, _BPF_TRACE_RAW_TP)
        return prog_fd, _attach_tracing(prog_fd)
    except ProbeError as err:
        raise ProbeError(f"BTF-typed raw tracepoint: {err}") from None


def fentry_refusal(connect_btf_id: int) -> str | None:
    """Why this kernel refuses fentry programs on tcp_v4_connect, found with an empty program
    (no compile); None when it takes one.  An empty program costs milliseconds where trying
    the real one costs a compile of about a second."""
    if not connect_btf_id:
        return "this kernel's BTF has no tcp_v4_connect"
    try:
        prog_fd = _load_tracing(_RETURN_0, connect_btf_id, "phobos_probe", _BPF_TRACE_FENTRY)
        link_fd = _attach_tracing(prog_fd)
    except ProbeError as err:
        return (f"the kernel refused an empty fentry program on tcp_v4_connect: {err.reason} "
                "(kernel lockdown, or no BPF trampolines)")
    os.close(link_fd)
    os.close(prog_fd)
    return None


#: The compiler's libraries: BCC links LLVM and clang in, and a compile
#: leaves ~85 MB of their code resident that the loaded program never needs.
_COMPILER_LIBS = ("libLLVM", "libclang")
_MADV_PAGEOUT = 21  # Linux 5.4+


def _release_heap() -> int:
    """Give what the compile used back to the kernel; returns the kB of RSS released.

    clang's freed heap (about 35 MB after a compile) goes back with
    malloc_trim, and the compiler's code pages - file-backed, so nothing is
    lost - are paged out of this process with MADV_PAGEOUT (about 80 MB);
    a later compile (a mode fallback) faults back in what it needs.
    """
    before = _rss_kb()
    try:
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return 0
    libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
    try:
        with open("/proc/self/maps") as fh:
            maps = fh.readlines()
    except OSError:
        return 0
    for line in maps:
        parts = line.split()
        if len(parts) > 5 and os.path.basename(parts[5]).startswith(_COMPILER_LIBS):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            libc.madvise(start, end - start, _MADV_PAGEOUT)  # EINVAL before 5.4: the pages stay
    return max(0, before - _rss_kb())


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


class Probe:
    """The loaded program and typed access to its maps.

    Parameters
    ----------
    mode : one of MODES; ``auto`` tries fentry, then kprobe, then tracepoint.
    offsets : struct offsets; read from BTF when None.
    max_edges, max_socks : map sizes.
    """

    def __init__(self, mode: str = "auto", offsets: KernelOffsets | None = None,
                 max_edges: int = BPF_CONSTANTS["MAX_EDGES"], max_socks: int = BPF_CONSTANTS["MAX_SOCKS"]):
        if mode not in MODES:
            raise ProbeError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self._bcc = import_bcc()
        self.offsets = offsets or kernel_offsets(read_btf())
        if self.offsets.sock is None:
            raise ProbeError(f"cannot read sockets from the raw tracepoint: {self.offsets.sock_missing}")
        self.max_socks = int(max_socks)
        self.max_edges = int(max_edges)
        if self.max_edges < 2:
            raise ProbeError(f"max_edges must be at least 2, not {self.max_edges}")
        self._base_cflags = self.offsets.cflags() + [
            f"-DMAX_EDGES={self.max_edges}", f"-DMAX_SOCKS={self.max_socks}",
            f"-DSOCK_BUCKET_BITS={sock_bucket_bits(self.max_socks)}", "-w"]
        self.bpf = None
        self.mode = ""
        if mode == "auto":
            unused = []
            for candidate in ("fentry", "kprobe"):
                why = fentry_refusal(self.offsets.connect_btf_id) if candidate == "fentry" else None
                why = why or self._try_in_child(candidate)
                if why is None:
                    try:
                        self._load(candidate)
                        break
                    except ProbeError as err:
                        why = err.reason
                unused.append(f"{candidate} not used: {why}")
            else:
                self._load("tracepoint")
            log.info("tracing mode: %s (state changes from %s%s)", self.mode, self.hook,
                     "".join(f"; {u}" for u in unused))
        else:
            self._load(mode)
            log.info("tracing mode: %s (--mode %s; state changes from %s)", self.mode, mode, self.hook)
        released = _release_heap()
        log.debug("released %d kB of the compiler's memory after loading", released)
        self.tick_ns = tick_ns()
        self._config = self.bpf["config"]
        self._counters = self.bpf["edges"]
        self._id_map = self.bpf["edge_ids"]
        self._val_format = struct.Struct(_ctype_format(self._counters.sLeaf))
        self._val_names = [name for name, _ in self._counters.sLeaf._fields_]
        self._held_at = self._val_names.index("held")
        self._edges: dict[int, _Edge] = {}
        self._created_seen = -1
        self._drains = 0
        self._epoch = 0
        self._batch_ok = True
        # Ids 1..max_edges-1, 1 on top: the ids in use stay low and few
        # counters are read per drain.
        free = self.bpf["edge_free"]
        for i in range(self.max_edges - 1, 0, -1):
            free.push(ct.c_uint32(i))
        self._free = free

    # -- loading ---------------------------------------------------------
    def _try_in_child(self, mode: str) -> str | None:
        """Whether ``mode`` loads, tried in a forked child: None, or why not.

        A failed compile leaves tens of MB of clang heap behind; in a child
        it costs the agent nothing.  The child's stderr (libbcc writes there
        from C, below Python) goes to a scratch file: a trial that fails is
        an answer, not an error, and is reported by the caller in one line.
        """
        with tempfile.TemporaryFile() as scratch:
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: never returns
                os.close(rfd)
                os.dup2(scratch.fileno(), 2)
                try:
                    self._load(mode)
                    self.close()
                    msg = b""
                except BaseException as err:  # report anything, exit cleanly
                    why = getattr(err, "reason", None) or str(err) or type(err).__name__
                    msg = why.encode()[:8000]
                os.write(wfd, b"E" + msg if msg else b"K")
                os._exit(0)
            os.close(wfd)
            chunks = []
            while True:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(rfd)
            os.waitpid(pid, 0)
            scratch.seek(0)
            raw = scratch.read().decode(errors="replace").strip()
        if raw:
            log.debug("BCC's output while trying %s mode:\n%s", mode, raw)
        reply = b"".join(chunks)
        if reply == b"K":
            return None
        why = reply[1:].decode(errors="replace") if reply else "the trial process died"
        refused = _BCC_LOAD_FAILED.findall(raw)
        if refused and refused[-1] not in why:
            # BCC turns EPERM into "Need super-user privileges", also for root
            # on a kernel that refuses the program type; the errno says more.
            why += f", bpf() said: {refused[-1]}"
        return why

    def _load(self, mode: str) -> None:
        BPF = self._bcc.BPF
        if not BPF.tracepoint_exists("sock", "inet_sock_set_state"):
            why = ("tracepoint sock:inet_sock_set_state is missing (kernel >= 4.16 with "
                   "CONFIG_TRACEPOINTS; is tracefs mounted? mount -t tracefs tracefs /sys/kernel/tracing)")
            raise ProbeError(why, reason=why)
        # No BPF.support_raw_tracepoint(): it loads all of /proc/kallsyms into a
        # symbol cache that stays (about 30 MB of RSS), and the BTF this needs
        # anyway (Linux 5.2+) implies raw tracepoints (4.17+).
        cflags = list(self._base_cflags)
        if mode == "kprobe":
            if not os.path.exists("/sys/kernel/tracing/kprobe_events") and \
                    not os.path.exists("/sys/kernel/debug/tracing/kprobe_events"):
                raise _mode_error(mode, "this kernel has no kprobes (CONFIG_KPROBE_EVENTS is off)")
            cflags.append("-DPHOBOS_CALL_PROBES")
        elif mode == "fentry":
            if not BPF.support_kfunc():
                raise _mode_error(mode, "this kernel has no BPF trampolines (fentry/fexit)")
            cflags += ["-DPHOBOS_CALL_PROBES", "-DPHOBOS_FENTRY"]
        try:
            # The constructor attaches the KFUNC/KRETFUNC probes of fentry
            # mode; the state-change program is attached below.
            bpf = BPF(src_file=BPF_SOURCE.encode(), cflags=cflags)
        except Exception as err:  # BCC raises bare Exception
            if mode == "fentry":
                raise _mode_error(mode, "the kernel refused to attach fentry/fexit programs to "
                                  "tcp_v4_connect/tcp_v6_connect/inet_csk_accept (kernel lockdown or no "
                                  f"trampoline support), BCC said: {err}") from None
            raise _mode_error(mode, f"the kernel refused the BPF program: {err}") from None
        if mode == "kprobe":
            try:
                for fn in ("tcp_v4_connect", "tcp_v6_connect"):
                    bpf.attach_kprobe(event=fn, fn_name="phobos_connect_enter")
                    bpf.attach_kretprobe(event=fn, fn_name="phobos_connect_return")
                bpf.attach_kretprobe(event="inet_csk_accept", fn_name="phobos_accept_return")
            except Exception as err:
                bpf.cleanup()
                raise _mode_error(mode, f"could not attach kprobes: {err}") from None
        try:
            self._attach_state(bpf)
        except ProbeError as err:
            bpf.cleanup()
            raise _mode_error(mode, str(err)) from None
        self.bpf = bpf
        self.mode = mode

    def _attach_state(self, bpf) -> None:
        """Attach the state-change program: BTF-typed where the kernel takes it, else plain.

        The BTF-typed raw tracepoint (Linux 5.5+) reads the socket with
        direct loads; the plain one needs a helper call per read, which
        costs about as much as a map lookup.  ``self.hook`` says which.
        """
        self._state_fds: tuple[int, ...] = ()
        why = "this kernel's BTF has no btf_trace_" + STATE_TRACEPOINT
        if self.offsets.state_tp_btf_id:
            insns = bpf.dump_func(b"phobos_state_btf")
            cast_why = ("this kernel's BTF has no bpf_rdonly_cast (Linux < 6.2)" if not self.offsets.rdonly_cast_btf_id
                        else "this kernel's BTF has no struct tcp_sock")
            if self.offsets.rdonly_cast_btf_id and self.offsets.tcp_sock_btf_id:
                try:
                    self._state_fds = attach_btf_raw_tracepoint(
                        link_tcp_sock_casts(insns, self.offsets.rdonly_cast_btf_id),
                        self.offsets.state_tp_btf_id, "phobos_state")
                    self.hook = f"tp_btf/{STATE_TRACEPOINT}"
                    return
                except ProbeError as err:
                    cast_why = f"bpf_rdonly_cast refused: {err.reason}"
            try:
                self._state_fds = attach_btf_raw_tracepoint(
                    link_tcp_sock_casts(insns), self.offsets.state_tp_btf_id, "phobos_state")
                self.hook = f"tp_btf/{STATE_TRACEPOINT} (tcp_sock read through a helper: {cast_why})"
                return
            except ProbeError as err:
                why = str(err)
        try:
            bpf.attach_raw_tracepoint(tp=STATE_TRACEPOINT.encode(), fn_name=b"phobos_state_raw")
        except Exception as err:  # BCC raises bare Exception
            raise ProbeError(f"could not attach the raw tracepoint {STATE_TRACEPOINT}: {err}") from None
        self.hook = f"raw_tp/{STATE_TRACEPOINT} (not BTF-typed: {why})"

    def close(self) -> None:
        for fd in getattr(self, "_state_fds", ()):
            os.close(fd)
        self._state_fds = ()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    # -- config ------------------------------------------------------------
    def _set_config(self, slot: int, value: int) -> None:
        self._config[ct.c_int(slot)] = ct.c_uint32(value)

    def _forget_remembered_edges(self) -> None:
        """Void the edge each CPU remembers of its last connect and accept (edge_cache)."""
        self._epoch = (self._epoch + 1) & 0xFFFFFFFF
        self._set_config(BPF_CONSTANTS["CFG_EPOCH"], self._epoch)

    def set_seeding(self, on: bool) -> None:
        self._set_config(BPF_CONSTANTS["CFG_SEEDING"], 1 if on else 0)

    # -- edges ---------------------------------------------------------------
    def drain(self) -> list[tuple[EdgeKey, dict[str, Any]]]:
        """What each edge counted since the last drain: (key, values) of the edges that moved.

        The kernel's counters only grow while an edge's id lives; the
        difference between two reads is exact whatever the kernel does
        meanwhile (an event half-counted at the read completes in the next
        one).  Edges idle for RETIRE_IDLE_DRAINS drains are retired.
        """
        self._drains += 1
        self._refresh_ids()
        out = []
        for eid, raw in self._read_counters():
            edge = self._edges[eid]
            digest = hash(raw)
            if digest == edge.digest and edge.sums:
                edge.idle += 1
                continue
            sums = self._sum_cpus(raw)
            before = edge.sums or (0,) * len(sums)
            edge.sums, edge.digest, edge.idle = sums, digest, 0
            delta = [now - was for now, was in zip(sums, before)]
            if any(delta[i] for i in range(len(delta)) if i != self._held_at):
                out.append((edge.key, self._edge_val(delta, edge.comm)))
        self._retire()
        return out

    def _refresh_ids(self, force: bool = False) -> None:
        """Learn the edge ids the kernel handed out since the last look (a walk of edge_ids when it has)."""
        created = int(sum(self.bpf["stats"][ct.c_int(BPF_CONSTANTS["STAT_EDGES_CREATED"])]))
        if created == self._created_seen and not force:
            return
        self._created_seen = created
        comms = self.bpf["edge_comms"]
        for k, v in self._items(self._id_map):
            eid = int(getattr(v, "value", v))
            edge = self._edges.get(eid)
            if edge is not None and edge.retired_at < 0:
                continue
            if edge is None:
                comm = comms[ct.c_int(eid)].comm.decode(errors="replace")
                self._edges[eid] = _Edge(self._edge_key(k), comm)

    def _read_counters(self) -> Iterable[tuple[int, bytes]]:
        """(id, raw per-CPU bytes) of every known id, read in batches over the ids' range."""
        if self._edges:
            yield from self._array_slots(self._counters, max(self._edges) + 1, 512, self._edges.__contains__)

    def _array_slots(self, table, top: int, chunk: int,
                     wanted: Any = lambda slot: True) -> Iterable[tuple[int, bytes]]:
        """(slot, raw bytes) of the ``wanted`` slots 0..top-1 of an array map, ``chunk`` slots per
        batch read (one lookup per wanted slot where the kernel refuses batches: before 5.6)."""
        size = ct.sizeof(table.Leaf)
        buf = (table.Leaf * chunk)()
        keys = (ct.c_uint32 * chunk)()
        view = memoryview(buf).cast("B")
        for start in range(0, top, chunk):
            n = min(chunk, top - start)
            if not self._read_batch(table, start, n, keys, buf):
                for i in range(n):
                    if wanted(start + i):
                        buf[i] = table[ct.c_int(start + i)]
            for i in range(n):
                if wanted(start + i):
                    yield start + i, bytes(view[i * size:(i + 1) * size])

    def _read_batch(self, table, start: int, n: int, keys, buf) -> bool:
        """Slots start..start+n-1 of an array map into ``buf`` with one BPF_MAP_LOOKUP_BATCH
        (Linux 5.6+); False when the kernel did not give all of them (the caller reads them
        one by one; a kernel that refuses batches is not asked again)."""
        if not self._batch_ok:
            return False
        lib = self._bcc.libbcc.lib
        count = ct.c_uint32(n)
        out_batch = ct.c_uint32(0)
        in_batch = ct.c_uint32(start - 1)   # a batch starts after the slot in_batch names
        res = lib.bpf_lookup_batch(table.map_fd, ct.byref(in_batch) if start else None, ct.byref(out_batch),
                                   ct.byref(keys), ct.byref(buf), ct.byref(count))
        if res != 0 and ct.get_errno() != 2:  # ENOENT: the batch reached the map's end
            self._batch_ok = False
            return False
        return count.value == n

    def _sum_cpus(self, raw: bytes) -> tuple:
        rows = list(self._val_format.iter_unpack(raw))
        return tuple(sum(col) for col in zip(*rows)) if len(rows) > 1 else rows[0]

    def _edge_val(self, delta: list[int], comm: str) -> dict[str, Any]:
        """One edge's movement, named as the aggregator reads it."""
        names = iter(self._val_names)
        out: dict[str, Any] = {}
        values = iter(delta)
        for name in names:
            if name == "handshake_hist":
                out[name] = [next(values) for _ in range(HS_BUCKETS)]
            else:
                out[name] = next(values)
        out.pop("held")
        out["duration_ns_sum"] = out.pop("duration_jiffies_sum") * self.tick_ns
        out["handshake_us_sum"] = out.pop("handshake_ns_sum") // 1000
        out["comm"] = comm
        return out

    def _retire(self) -> None:
        """Unmap idle edges' keys; give back the ids of those unmapped a drain ago that no socket holds."""
        spare = self.max_edges - 1 - len(self._edges)
        idle_needed = 1 if spare < self.max_edges // 8 else RETIRE_IDLE_DRAINS
        zero = self._counters.Leaf()
        retiring = []
        for eid, edge in list(self._edges.items()):
            held = edge.sums[self._held_at] if edge.sums else 0
            if edge.retired_at >= 0:
                # A drain later every program that found the id through the
                # key (or remembered it in an epoch before the unmapping) has
                # finished; unheld, nothing can write to it now.
                if self._drains > edge.retired_at and held == 0:
                    self._counters[ct.c_int(eid)] = zero
                    del self._edges[eid]
                    self._free.push(ct.c_uint32(eid))
            elif edge.idle >= idle_needed and held == 0 and edge.sums:
                retiring.append(edge)
        if not retiring:
            return
        # Before any key goes: the ids the CPUs remember are void from now on.
        self._forget_remembered_edges()
        for edge in retiring:
            try:
                del self._id_map[self._id_key(edge.key)]
            except KeyError:
                pass
            edge.retired_at = self._drains

    def _id_key(self, key: EdgeKey):
        k = self._id_map.Key(netns=key.netns, pid=key.pid, lport=key.local_port, rport=key.remote_port,
                             direction=DIRECTION_IDS[key.direction])
        k.laddr[:] = list(_ip_bytes(key.local_ip))
        k.raddr[:] = list(_ip_bytes(key.remote_ip))
        return k

    @staticmethod
    def _edge_key(k) -> EdgeKey:
        return EdgeKey(netns=k.netns, pid=k.pid, direction=DIRECTIONS.get(k.direction, "outbound"),
                       local_ip=_ip(k.laddr), local_port=k.lport, remote_ip=_ip(k.raddr), remote_port=k.rport)

    # -- listeners -----------------------------------------------------------
    def listeners(self) -> list[dict[str, Any]]:
        out = []
        for k, v in self.bpf["listeners"].items():
            out.append({"netns": k.netns, "port": k.port, "pid": v.pid, "count": v.count,
                        "ip": _ip(v.addr), "comm": v.comm.decode(errors="replace")})
        return out

    def seed_listener(self, netns: int, port: int, ip: str, pid: int, comm: str, count: int) -> bool:
        """Add a listener found in /proc unless the kernel already saw it."""
        table = self.bpf["listeners"]
        key = table.Key(netns=netns, port=port)
        if key in table:
            return False
        leaf = table.Leaf(pid=pid, count=count)
        leaf.addr[:] = list(_ip_bytes(ip))
        leaf.comm = comm.encode()[:15]
        try:
            table[key] = leaf
        except Exception:  # BCC raises bare Exception when the map is full
            return False
        # An accept the kernel charged to no listener may be remembered
        # (edge_id_accepted): from now on it is charged to this one.
        self._forget_remembered_edges()
        return True

    # -- connections that predate the tracer --------------------------------
    @staticmethod
    def _items(table) -> Iterable:
        """All entries, in batches of up to 4096 per syscall where the kernel allows (5.6+)."""
        try:
            yield from table.items_lookup_batch()
            return
        except Exception:  # BCC raises bare Exception when batch lookups are refused
            pass
        yield from table.items()

    def socket_entries(self) -> Iterable[tuple[int, int, dict[str, Any]]]:
        """(bucket, way, entry) of every socket the kernel follows, from one read of the socket table."""
        table = self.bpf["socks"]
        ways = BPF_CONSTANTS["SOCK_WAYS"]
        owners_len = ways * _SOCK_OWNER.size
        empty = bytes(owners_len)
        for bucket, raw in self._array_slots(table, len(table), 1024):
            if raw[:owners_len] == empty:
                continue
            for w in range(ways):
                if not _SOCK_OWNER.unpack_from(raw, w * _SOCK_OWNER.size)[0]:
                    continue
                eid, established, _start, _syn, sport, dport, outbound = _SOCK_STATE.unpack_from(
                    raw, owners_len + w * _SOCK_STATE.size)
                yield bucket, w, {"edge": eid, "established": established, "sport": sport,
                                  "dport": dport, "outbound": outbound}

    def _followed(self, seeded: bool) -> Iterable[tuple[tuple, EdgeKey]]:
        """(netns, local ip, local port, remote ip, remote port) and edge of the open
        connections in the socket table (established) or the seeded map."""
        if seeded:
            for k, v in self._items(self.bpf["seeded"]):
                yield (k.netns, _ip(k.laddr), k.lport, _ip(k.raddr), k.rport), self._edge_key(v.edge)
            return
        self._refresh_ids(force=True)
        for _, _, st in self.socket_entries():
            edge = self._edges.get(st["edge"])
            if st["established"] and edge is not None:
                key = edge.key
                yield (key.netns, key.local_ip, st["sport"], key.remote_ip, st["dport"]), key

    def tracked_tuples(self) -> set[tuple]:
        """(netns, local ip, local port, remote ip, remote port) the kernel already follows."""
        return {t for t, _ in self._followed(seeded=False)}

    def seeded_tuples(self) -> set[tuple]:
        """Tuples in the seeded map: connections followed by 4-tuple whose close is still to come."""
        return {t for t, _ in self._followed(seeded=True)}

    def followed_sockets(self) -> dict[tuple, Any]:
        """Open connections the kernel follows, by their tuple (``tracked_tuples``,
        ``seeded_tuples``): their edge, and whether their close adds their
        totals (``tracer.sockdiag.Followed``; not for seeded ones)."""
        from tracer.sockdiag import Followed  # noqa: PLC0415 - only when open connections' bytes are read

        out: dict[tuple, Any] = {}
        for seeded in (False, True):
            for tup, edge in self._followed(seeded):
                out[tup] = Followed(edge, edge.direction == "outbound", not seeded)
        return out

    def seed_connection(self, tuple_: tuple, edge: EdgeKey, comm: str) -> bool:
        netns, lip, lport, rip, rport = tuple_
        table = self.bpf["seeded"]
        key = table.Key(netns=netns, lport=lport, rport=rport)
        key.laddr[:] = list(_ip_bytes(lip))
        key.raddr[:] = list(_ip_bytes(rip))
        leaf = table.Leaf()
        e = leaf.edge
        e.netns, e.pid, e.lport, e.rport = edge.netns, edge.pid, edge.local_port, edge.remote_port
        e.direction = DIRECTION_IDS[edge.direction]
        e.laddr[:] = list(_ip_bytes(edge.local_ip))
        e.raddr[:] = list(_ip_bytes(edge.remote_ip))
        leaf.comm = comm.encode()[:15]
        try:
            table[key] = leaf
        except Exception:  # map full: its close would go unseen, so do not count it
            return False
        return True

    def unseed(self, tuple_: tuple) -> bool:
        netns, lip, lport, rip, rport = tuple_
        table = self.bpf["seeded"]
        key = table.Key(netns=netns, lport=lport, rport=rport)
        key.laddr[:] = list(_ip_bytes(lip))
        key.raddr[:] = list(_ip_bytes(rip))
        try:
            del table[key]
            return True
        except KeyError:
            return False

    def orphans(self) -> set[tuple]:
        """Tuples that closed while seeding was on without being known."""
        out = set()
        for k, _ in self.bpf["orphans"].items():
            out.add((k.netns, _ip(k.laddr), k.lport, _ip(k.raddr), k.rport))
        self.bpf["orphans"].clear()
        return out

    # -- counters --------------------------------------------------------------
    def _percpu(self, name: str, names: tuple[str, ...]) -> dict[str, int]:
        table = self.bpf[name]
        return {label: int(sum(table[ct.c_int(i)])) for i, label in enumerate(names)}

    def drops(self) -> dict[str, int]:
        """Failed map updates since load, by map (cumulative)."""
        return self._percpu("drops", DROP_NAMES)

    def stats(self) -> dict[str, int]:
        return self._percpu("stats", STAT_NAMES)

    def missed_events(self) -> int:
        """Times the kernel skipped the program (another tracing program was running on the CPU).

        The kernel counts them per program as ``recursion_misses`` (shown in
        the program's fdinfo, kernel 5.12+; 0 where it is not shown).  A
        missed state change can be a lost connect, accept or close.
        """
        total = 0
        for fd in [fn.fd for fn in self.bpf.funcs.values()] + list(self._state_fds[:1]):
            try:
                with open(f"/proc/self/fdinfo/{fd}") as fh:
                    for line in fh:
                        if line.startswith("recursion_misses:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                continue
        return total
