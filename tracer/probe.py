"""Load the Phobos BPF program and read its maps (the only BCC importer).

What it does: compiles ``tracer/bpf/phobos.c`` with BCC, attaches it to the
``sock:inet_sock_set_state`` tracepoint and, where the kernel allows, to
``tcp_v4_connect``/``tcp_v6_connect``/``inet_csk_accept`` through fentry or
kprobes, and gives the agent plain Python values out of the maps.

How: the program reads ``sk->__sk_common.skc_net->ns.inum`` for the network
namespace.  Kernel headers may not match the running kernel, so the byte
offsets come from the kernel's own BTF (``/sys/kernel/btf/vmlinux``, parsed
here; about 0.2 s) and are passed to the compiler as ``-D`` flags; the C code never
dereferences a kernel struct through a header layout.

Cost: compiling takes a second or two of CPU at start-up (clang); after that
the only work is one drain per interval: flip the generation index, wait a
few milliseconds for programs still running on the old generation, then
look up and delete each edge of the old generation (one syscall per edge,
independent of how many connections the edge saw).  Reconciliation (only
after the socket map refused sockets) reads the socket and seeded maps in
batches of 4096 entries per syscall.

Caveats: modes other than ``tracepoint`` need kprobes or BPF trampolines;
kernels built without kprobes or locked down refuse them, and the error says
so.  ``auto`` tries them in a forked child whose stderr goes to a scratch
file: libbcc writes every refused load ("bpf: Failed to load program: ...")
straight to file descriptor 2, which would read like a failure of Phobos.
The outcome is one log line in Phobos' words (the mode, and why each other
mode was not used); BCC's raw text is logged at debug level.  The real load
is never silenced: if it fails, BCC's messages and the error are shown.
"""

from __future__ import annotations

import ctypes as ct
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
DIRECTIONS = {1: "outbound", 2: "inbound"}
DROP_NAMES = ("edges", "socks", "listeners", "orphans")
STAT_NAMES = ("events", "accept_no_listener", "missed_closes")
# Time for programs that read the old generation index to finish.  A BPF
# program runs for microseconds with migration disabled; 5 ms is ample.
GENERATION_GRACE_S = 0.005


class ProbeError(RuntimeError):
    """A probe could not be loaded or attached; the message says why and what to do.

    ``reason`` is the why alone (no mode, no advice), for the one line that
    ``auto`` logs about the modes it did not use.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def _mode_error(mode: str, reason: str) -> ProbeError:
    hint = "; use --mode tracepoint" if mode != "tracepoint" else ""
    return ProbeError(f"{mode} mode: {reason}{hint}", reason=reason)


# What libbcc prints to stderr when the kernel refuses a program (src/cc/libbpf.c).
_BCC_LOAD_FAILED = re.compile(r"^bpf: Failed to load program: (.+)$", re.M)


@dataclass(frozen=True)
class KernelOffsets:
    skc_net: int
    net_ns_inum: int
    skc_num: int
    accept_nargs: int

    def cflags(self) -> list[str]:
        return [
            f"-DSKC_NET_OFF={self.skc_net}",
            f"-DNET_NS_INUM_OFF={self.net_ns_inum}",
            f"-DSKC_NUM_OFF={self.skc_num}",
            f"-DACCEPT_NARGS={self.accept_nargs}",
        ]


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
_KIND_STRUCT, _KIND_UNION, _KIND_TYPEDEF, _KIND_FUNC, _KIND_FUNC_PROTO = 4, 5, 8, 12, 13
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
            if kind in (_KIND_STRUCT, _KIND_UNION, _KIND_FUNC_PROTO, _KIND_FUNC) or kind in _KIND_MODIFIERS:
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
            if k == kind and (vlen or kind == _KIND_FUNC) and self.data[start:start + len(want)] == want:
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

    def func_nargs(self, name: str) -> int | None:
        tid = self._find(_KIND_FUNC, name)
        proto = self.types.get(self.types[tid][2]) if tid else None
        return proto[4] if proto is not None else None


def kernel_offsets(btf: bytes) -> KernelOffsets:
    """The struct offsets phobos.c needs, from a BTF blob of the running kernel."""
    b = Btf(btf)
    sock_common = b.offset("sock", "__sk_common")
    return KernelOffsets(
        skc_net=sock_common + b.offset("sock_common", "skc_net"),
        net_ns_inum=b.offset("net", "ns") + b.offset("ns_common", "inum"),
        skc_num=sock_common + b.offset("sock_common", "skc_num"),
        accept_nargs=b.func_nargs("inet_csk_accept") or 2,
    )


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
    # Cached: reading a full socket map converts the same few addresses tens of thousands of times.
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
    bpf = bcc.BPF(src_file=BPF_SOURCE.encode(), cflags=offsets.cflags() + ["-DPHOBOS_CALL_PROBES", "-w"])
    try:
        names = ["phobos_connect_enter", "phobos_connect_return", "phobos_accept_return"]
        for name in names:
            bpf.load_func(name.encode(), bcc.BPF.KPROBE)
        return names
    finally:
        bpf.cleanup()


def _release_heap() -> None:
    """Give clang's freed heap back to the kernel (about 35 MB of RSS after a compile)."""
    try:
        ct.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Probe:
    """The loaded program and typed access to its maps.

    Parameters
    ----------
    mode : one of MODES; ``auto`` tries fentry, then kprobe, then tracepoint.
    offsets : struct offsets; read from BTF when None.
    max_edges, max_socks : map sizes.
    """

    def __init__(self, mode: str = "auto", offsets: KernelOffsets | None = None,
                 max_edges: int = 16384, max_socks: int = 65536):
        if mode not in MODES:
            raise ProbeError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self._bcc = import_bcc()
        self.offsets = offsets or kernel_offsets(read_btf())
        self.max_socks = int(max_socks)
        self._base_cflags = self.offsets.cflags() + [
            f"-DMAX_EDGES={int(max_edges)}", f"-DMAX_SOCKS={int(max_socks)}", "-w"]
        self.bpf = None
        self.mode = ""
        if mode == "auto":
            unused = []
            for candidate in ("fentry", "kprobe"):
                why = self._try_in_child(candidate)
                if why is None:
                    try:
                        self._load(candidate)
                        break
                    except ProbeError as err:
                        why = err.reason
                unused.append(f"{candidate} not used: {why}")
            else:
                self._load("tracepoint")
            log.info("tracing mode: %s%s", self.mode, f" ({'; '.join(unused)})" if unused else "")
        else:
            self._load(mode)
            log.info("tracing mode: %s (--mode %s)", self.mode, mode)
        _release_heap()
        self.gen = 0
        self._edges = [self.bpf["edges0"], self.bpf["edges1"]]
        self._config = self.bpf["config"]
        self._lookup_and_delete = True

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
            # The constructor also attaches the TRACEPOINT_PROBE and, in
            # fentry mode, the KFUNC/KRETFUNC probes.
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
        self.bpf = bpf
        self.mode = mode

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    # -- config ------------------------------------------------------------
    def _set_config(self, slot: int, value: int) -> None:
        self._config[ct.c_int(slot)] = ct.c_uint32(value)

    def set_seeding(self, on: bool) -> None:
        self._set_config(1, 1 if on else 0)

    # -- edges ---------------------------------------------------------------
    def drain(self) -> list[tuple[EdgeKey, dict[str, Any]]]:
        """Flip the generation and return (and remove) the old generation's counters."""
        old = self.gen
        self.gen = 1 - old
        self._set_config(0, self.gen)
        time.sleep(GENERATION_GRACE_S)
        table = self._edges[old]
        out = []
        for key in list(table.keys()):
            leaf = table.Leaf()
            got = False
            if self._lookup_and_delete:
                res = self._bcc.libbcc.lib.bpf_lookup_and_delete(table.map_fd, ct.byref(key), ct.byref(leaf))
                if res == 0:
                    got = True
                elif ct.get_errno() not in (2,):  # ENOENT: gone already
                    self._lookup_and_delete = False  # kernel < 5.14 for hashes
            if not got and not self._lookup_and_delete:
                try:
                    leaf = table[key]
                    del table[key]
                    got = True
                except KeyError:
                    pass
            if got:
                out.append((self._edge_key(key), self._edge_val(leaf)))
        return out

    @staticmethod
    def _edge_key(k) -> EdgeKey:
        return EdgeKey(netns=k.netns, pid=k.pid, direction=DIRECTIONS.get(k.direction, "outbound"),
                       local_ip=_ip(k.laddr), local_port=k.lport, remote_ip=_ip(k.raddr), remote_port=k.rport)

    @staticmethod
    def _edge_val(v) -> dict[str, Any]:
        return {"connects": v.connects, "accepts": v.accepts, "closes": v.closes, "failures": v.failures,
                "open_delta": v.open_delta, "duration_ns_sum": v.duration_ns_sum,
                "bytes_sent": v.bytes_sent, "bytes_received": v.bytes_received,
                "comm": v.comm.decode(errors="replace")}

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

    def tracked_tuples(self) -> set[tuple]:
        """(netns, local ip, local port, remote ip, remote port) the kernel already follows."""
        out = set()
        for _, st in self._items(self.bpf["socks"]):
            if st.established:
                out.add((st.edge.netns, _ip(st.edge.laddr), st.sport, _ip(st.edge.raddr), st.dport))
        return out

    def seeded_tuples(self) -> set[tuple]:
        """Tuples in the seeded map: connections followed by 4-tuple whose close is still to come."""
        return {(k.netns, _ip(k.laddr), k.lport, _ip(k.raddr), k.rport) for k, _ in self._items(self.bpf["seeded"])}

    def seed_connection(self, tuple_: tuple, edge: EdgeKey, comm: str) -> bool:
        netns, lip, lport, rip, rport = tuple_
        table = self.bpf["seeded"]
        key = table.Key(netns=netns, lport=lport, rport=rport)
        key.laddr[:] = list(_ip_bytes(lip))
        key.raddr[:] = list(_ip_bytes(rip))
        leaf = table.Leaf()
        e = leaf.edge
        e.netns, e.pid, e.lport, e.rport = edge.netns, edge.pid, edge.local_port, edge.remote_port
        e.direction = 1 if edge.direction == "outbound" else 2
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
        for fn in self.bpf.funcs.values():
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as fh:
                    for line in fh:
                        if line.startswith("recursion_misses:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                continue
        return total
