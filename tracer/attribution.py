"""Who is behind a pid, and what TCP state existed before the tracer started.

What it reads: ``/proc/PID/{comm,exe,cmdline,cgroup,environ,stat}`` to turn
a pid into comm, exe, command line, container id, Kubernetes pod (uid,
namespace, name, labels where visible), systemd unit and a service name; and,
once at start-up, ``/proc/PID/net/tcp{,6}`` of one process per network
namespace plus the ``socket:[inode]`` links under ``/proc/*/fd`` to find
listeners and open connections that predate the tracer.

How a service name is chosen: the catalog's rules when a catalog is given,
else the Kubernetes ``app.kubernetes.io/name`` or ``app`` label, else the
systemd unit (minus ``.service``) of a system service, else comm.

Cost: one small read per file per new pid, cached per (pid, start time); the
start-up snapshot reads every process's fd directory once (about 1 ms per
thousand sockets).  The command line (which any local user chooses) is read
up to 4 KiB and the catalog matches its regexes with RE2, in time linear in
that text, so no command line can stall attribution: ``(a+)+$`` against 27
``a``s and a ``!`` takes microseconds (Python's ``re`` needs seconds).  The
fixed patterns below run on cgroup paths (up to 8 KiB) and stay in
milliseconds on crafted paths.

Caveats: pod name and namespace come from the process's environment or its
service-account mount; labels only where a downward-API file exposes them.
Every function takes the /proc root as a parameter so tests can point it at
fixture directories.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "ProcSocket",
    "parse_proc_net_tcp",
    "parse_cgroup",
    "cgroup_info",
    "parse_labels",
    "default_service",
    "Attributor",
    "TcpSnapshot",
    "tcp_snapshot",
]

log = logging.getLogger("phobos.tracer.attribution")

# Kernel TCP states (include/net/tcp_states.h) as /proc/net/tcp prints them.
# tracer/bpf/phobos.c names those it acts on P_TCP_*; tests/test_bpf_constants.py
# keeps the two equal.
TCP_ESTABLISHED = 0x01
TCP_SYN_SENT = 0x02
TCP_SYN_RECV = 0x03
TCP_FIN_WAIT1 = 0x04
TCP_FIN_WAIT2 = 0x05
TCP_CLOSE = 0x07
TCP_CLOSE_WAIT = 0x08
TCP_LAST_ACK = 0x09
TCP_LISTEN = 0x0A
TCP_CLOSING = 0x0B
# States in which a socket still counts as an open connection: it will pass
# through CLOSE later, which is where the kernel decrements the gauge.
OPEN_STATES = {TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING}


@dataclass(frozen=True)
class ProcSocket:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    inode: int


def _hex_ip(text: str) -> str:
    """An address as /proc/net/tcp prints it: 32-bit words in host byte order."""
    raw = bytes.fromhex(text)
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    packed = b"".join(struct.pack("=I", int.from_bytes(w, "big")) for w in words)
    addr = ipaddress.ip_address(packed)
    if addr.version == 6 and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_proc_net_tcp(text: str) -> list[ProcSocket]:
    """Sockets from the text of /proc/net/tcp or /proc/net/tcp6."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            lip, lport = parts[1].split(":")
            rip, rport = parts[2].split(":")
            out.append(ProcSocket(_hex_ip(lip), int(lport, 16), _hex_ip(rip), int(rport, 16),
                                  int(parts[3], 16), int(parts[9])))
        except ValueError:
            continue
    return out


def _read(path: str, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode(errors="replace")
    except OSError:
        return ""


def parse_cgroup(text: str) -> str:
    """The cgroup path of a process from /proc/PID/cgroup (v2 line preferred)."""
    fallback = ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            return path
        if controllers == "name=systemd" or (not fallback and path not in ("", "/")):
            fallback = path
    return fallback


_HEX64 = r"([0-9a-f]{64})"
_CONTAINER_PATTERNS = (
    ("docker", re.compile(r"docker-" + _HEX64 + r"\.scope")),
    ("docker", re.compile(r"/docker/" + _HEX64)),
    ("containerd", re.compile(r"cri-containerd-" + _HEX64 + r"\.scope")),
    ("cri-o", re.compile(r"crio-" + _HEX64 + r"\.scope")),
    ("podman", re.compile(r"libpod-" + _HEX64 + r"\.scope")),
    ("kubepods", re.compile(r"/kubepods[^ ]*/pod[0-9a-f_-]+/" + _HEX64)),
)
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def cgroup_info(path: str) -> dict[str, str]:
    """Container id, runtime, pod uid and systemd unit from a cgroup path.

    >>> cgroup_info("/system.slice/nginx.service")["unit"]
    'nginx.service'
    """
    info = {"container_id": "", "runtime": "", "pod_uid": "", "unit": ""}
    for runtime, pattern in _CONTAINER_PATTERNS:
        m = pattern.search(path)
        if m:
            info["container_id"], info["runtime"] = m.group(1), runtime
            break
    m = _POD_UID.search(path)
    if m:
        info["pod_uid"] = m.group(1).replace("_", "-")
    if not info["container_id"]:
        units = [c for c in path.split("/") if c.endswith(".service")]
        if units:
            info["unit"] = units[-1]
    return info


def parse_labels(text: str) -> dict[str, str]:
    """Labels from a downward-API file (``key="value"`` per line)."""
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            labels[key.strip()] = value
    return labels


def _environ(text: str) -> dict[str, str]:
    env = {}
    for item in text.split("\0"):
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    return env


def _starttime(stat: str) -> str:
    """Field 22 of /proc/PID/stat: tells a reused pid from the old process."""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def default_service(proc: Mapping[str, Any]) -> str:
    """Service name without a catalog: k8s label, system unit, comm."""
    labels = proc.get("labels") or {}
    for label in ("app.kubernetes.io/name", "app"):
        if labels.get(label):
            return labels[label]
    unit = proc.get("unit") or ""
    if unit and (proc.get("cgroup") or "").startswith("/system.slice/"):
        return unit[: -len(".service")] if unit.endswith(".service") else unit
    return proc.get("comm") or ""


class Attributor:
    """pid -> attribution dict, cached per (pid, start time).

    Parameters
    ----------
    proc_root : where /proc is (tests use fixture directories).
    catalog : object with ``match_service(proc) -> str | None``, or None.
    host : host name given to catalog rules.
    """

    def __init__(self, proc_root: str = "/proc", catalog: Any = None, host: str = ""):
        self.proc_root = proc_root
        self.catalog = catalog
        self.host = host
        self._cache: dict[int, tuple[str, dict[str, Any]]] = {}

    def _p(self, pid: int, name: str) -> str:
        return os.path.join(self.proc_root, str(pid), name)

    def process(self, pid: int) -> dict[str, Any]:
        """Everything /proc says about ``pid`` (empty values when it is gone)."""
        start = _starttime(_read(self._p(pid, "stat"), 4096))
        cached = self._cache.get(pid)
        if cached is not None and start and cached[0] == start:
            return cached[1]
        info: dict[str, Any] = {"pid": pid, "comm": "", "exe": "", "cmdline": "", "cgroup": "",
                                "container_id": "", "pod_uid": "", "pod": "", "namespace": "",
                                "unit": "", "labels": {}}
        if pid <= 0 or not start:
            return info
        info["comm"] = _read(self._p(pid, "comm"), 64).strip()
        try:
            info["exe"] = os.readlink(self._p(pid, "exe"))
        except OSError:
            pass
        info["cmdline"] = " ".join(_read(self._p(pid, "cmdline"), 4096).split("\0")).strip()
        info["cgroup"] = parse_cgroup(_read(self._p(pid, "cgroup"), 8192))
        cg = cgroup_info(info["cgroup"])
        info["container_id"], info["pod_uid"], info["unit"] = cg["container_id"], cg["pod_uid"], cg["unit"]
        if info["pod_uid"] or info["container_id"]:
            env = _environ(_read(self._p(pid, "environ")))
            for key in ("POD_NAME", "MY_POD_NAME", "K8S_POD_NAME", "KUBERNETES_POD_NAME"):
                if env.get(key):
                    info["pod"] = env[key]
                    break
            if not info["pod"] and info["pod_uid"]:
                info["pod"] = env.get("HOSTNAME", "")  # kubelet sets it to the pod name
            for key in ("POD_NAMESPACE", "MY_POD_NAMESPACE", "K8S_POD_NAMESPACE", "KUBERNETES_NAMESPACE"):
                if env.get(key):
                    info["namespace"] = env[key]
                    break
            root = self._p(pid, "root")
            if info["pod_uid"] and not info["namespace"]:
                info["namespace"] = _read(os.path.join(
                    root, "var/run/secrets/kubernetes.io/serviceaccount/namespace"), 256).strip()
            info["labels"] = parse_labels(_read(os.path.join(root, "etc/podinfo/labels")))
        self._cache[pid] = (start, info)
        return info

    def attribute(self, pid: int, comm: str = "", endpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attribution of ``pid`` with its service name (catalog first)."""
        info = dict(self.process(pid))
        if not info["comm"]:
            info["comm"] = comm
        endpoint = endpoint or {}
        service = None
        if self.catalog is not None:
            query = {"comm": info["comm"], "exe": info["exe"], "cmdline": info["cmdline"],
                     "unit": info["unit"], "labels": info["labels"], "host": self.host,
                     "ip": endpoint.get("ip", ""), "port": endpoint.get("port", 0)}
            try:
                service = self.catalog.match_service(query)
            except Exception as err:  # a bad rule must not stop tracing
                log.warning("catalog rule failed for pid %s: %s", pid, err)
        info["service"] = service or default_service(info)
        return info

    def forget_dead(self) -> None:
        for pid in list(self._cache):
            if not os.path.exists(self._p(pid, "stat")):
                del self._cache[pid]


@dataclass
class TcpSnapshot:
    """TCP state of every network namespace at one moment."""

    # (netns, ip, port) -> (pid, comm, socket count)
    listeners: dict[tuple[int, str, int], tuple[int, str, int]]
    # (netns, local ip, local port, remote ip, remote port) -> owning pid
    connections: dict[tuple[int, str, int, str, int], int]


def _netns_of(proc_root: str, pid: str) -> int:
    try:
        link = os.readlink(os.path.join(proc_root, pid, "ns", "net"))
    except OSError:
        return 0
    m = re.search(r"\[(\d+)\]", link)
    return int(m.group(1)) if m else 0


def socket_owners(proc_root: str = "/proc") -> tuple[dict[int, int], dict[int, int]]:
    """({socket inode: pid}, {netns: one pid in it}) from /proc/*/fd and /proc/*/ns/net."""
    owners: dict[int, int] = {}
    netns_pid: dict[int, int] = {}
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        ns = _netns_of(proc_root, entry)
        if ns and ns not in netns_pid:
            netns_pid[ns] = int(entry)
        fd_dir = os.path.join(proc_root, entry, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), int(entry))
    return owners, netns_pid


def tcp_snapshot(proc_root: str = "/proc", comm_of: Callable[[int], str] | None = None) -> TcpSnapshot:
    """Listeners and open connections of all network namespaces, read once."""
    owners, netns_pid = socket_owners(proc_root)
    listeners: dict[tuple[int, str, int], tuple[int, str, int]] = {}
    connections: dict[tuple[int, str, int, str, int], int] = {}

    def comm(pid: int) -> str:
        if comm_of is not None:
            return comm_of(pid)
        return _read(os.path.join(proc_root, str(pid), "comm"), 64).strip()

    for netns, pid in netns_pid.items():
        for name in ("tcp", "tcp6"):
            for s in parse_proc_net_tcp(_read(os.path.join(proc_root, str(pid), "net", name), 1 << 30)):
                owner = owners.get(s.inode, 0)
                if s.state == TCP_LISTEN:
                    key = (netns, s.local_ip, s.local_port)
                    old = listeners.get(key)
                    if old is None:
                        listeners[key] = (owner, comm(owner) if owner else "", 1)
                    else:
                        listeners[key] = (old[0] or owner, old[1] or (comm(owner) if owner else ""), old[2] + 1)
                elif s.state in OPEN_STATES and owner:
                    connections[(netns, s.local_ip, s.local_port, s.remote_ip, s.remote_port)] = owner
    return TcpSnapshot(listeners, connections)


def host_ip() -> str:
    """The address the host uses for its default route (no packet is sent)."""
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                return s.getsockname()[0]
        except OSError:
            continue
    return "::"
