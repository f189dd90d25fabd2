"""Small multi-host topologies on one kernel, for the tracer's BPF tests.

Each "host" is a network namespace with one veth interface plugged into a
bridge that lives in a "switch" namespace of its own, so nothing touches the
root namespace's interfaces or routes.  Host ``i`` (1-based) gets
``10.200.0.i/24`` and ``fd00:200::i/64``.  At most ``MAX_HOSTS`` hosts; every
process started through ``Host.spawn`` is killed and every namespace deleted
on ``close()`` (also when the ``with`` block raises).

Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field

__all__ = ["Host", "Topology", "available"]

MAX_HOSTS = 4
V4_NET = "10.200.0"
V6_NET = "fd00:200::"


def available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "iproute2 (ip) is not installed"
    return True, ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class Host:
    name: str           # namespace name
    index: int
    ipv4: str
    ipv6: str
    netns: int = 0      # inode number, as the tracer reports it
    procs: list = field(default_factory=list)

    def run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=True)

    def spawn(self, *cmd: str, **kwargs) -> subprocess.Popen:
        """Start a process inside the host; it is killed when the topology closes."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, script: str, *args: str, **kwargs) -> subprocess.Popen:
        """Run a Python script inside the host with pipes for stdin/stdout.

        ``ip netns exec`` execs the command, so the Popen pid is the script's pid.
        """
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return self.spawn(sys.executable, "-c", script, *args, **kwargs)


class Topology:
    """``with Topology(3) as hosts: ...`` - hosts[0] is 10.200.0.1."""

    def __init__(self, count: int, prefix: str | None = None) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"1..{MAX_HOSTS} hosts, not {count}")
        self.count = count
        self.prefix = prefix or f"phb{os.getpid() % 100000}"
        self.switch = f"{self.prefix}sw"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> list[Host]:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self.hosts

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "del", name, check=False)  # left over from a killed run
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, self.count + 1):
            name = f"{self.prefix}h{i}"
            self._add_ns(name)
            # Create the pair inside the switch namespace, then move one end.
            _ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                "netns", name)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")
            ipv4, ipv6 = f"{V4_NET}.{i}", f"{V6_NET}{i}"
            _ip("-n", name, "addr", "add", f"{ipv4}/24", "dev", "eth0")
            _ip("-n", name, "-6", "addr", "add", f"{ipv6}/64", "dev", "eth0", "nodad")
            _ip("-n", name, "link", "set", "eth0", "up")
            host = Host(name=name, index=i, ipv4=ipv4, ipv6=ipv6)
            host.netns = _netns_inode(name) or 0
            self.hosts.append(host)

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs:
                if proc.poll() is None:
                    try:
                        proc.send_signal(signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for name in reversed(self._namespaces):
            _ip("netns", "del", name, check=False)
        self._namespaces.clear()


def _netns_inode(name: str) -> int:
    """Inode of a named namespace: what /proc/PID/ns/net shows for processes in it."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        out = subprocess.run(["ip", "netns", "exec", name, "readlink", "/proc/self/ns/net"],
                             capture_output=True, text=True, check=False).stdout
        m = re.search(r"\[(\d+)\]", out)
        return int(m.group(1)) if m else 0


# --- NAT and routing helpers (tests/test_conntrack.py) --------------------------
# Added beside the topology: pods behind a host, nftables rulesets, sysctls and
# blackhole routes, all inside namespaces the topology owns.

POD_V4_NET = "10.201"
POD_V6_NET = "fd00:201"


def nft_available() -> tuple[bool, str]:
    if shutil.which("nft") is None:
        return False, "nftables (nft) is not installed: apt-get install -y nftables"
    return True, ""


def nft(host: Host, ruleset: str) -> None:
    """Load an nftables ruleset (``nft -f`` syntax) into the host's namespace.

    Tables vanish with the namespace, so nothing needs removing by hand.
    """
    done = subprocess.run(["ip", "netns", "exec", host.name, "nft", "-f", "-"], input=ruleset, text=True,
                          capture_output=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft -f in {host.name} failed: {done.stderr.strip()}")


def sysctl(host: Host, key: str, value: str | int) -> None:
    host.run("sysctl", "-q", "-w", f"{key}={value}")


def blackhole(host: Host, *prefixes: str) -> None:
    """Drop whatever the host would route to these prefixes (e.g. virtual ranges
    that only exist before NAT), so an untranslated packet never goes anywhere."""
    for prefix in prefixes:
        _ip("-n", host.name, *(["-6"] if ":" in prefix else []), "route", "add", "blackhole", prefix)


def add_pod(topology: Topology, host: Host, n: int = 1) -> Host:
    """A namespace behind ``host``, the way a pod sits behind its node.

    The pod is plugged into the host by a veth pair and routed (not bridged):
    ``10.201.I.(n+1)`` and ``fd00:201:I::(n+1)`` for host index I, default
    route via the host, which forwards; the topology's other hosts route
    ``10.201.I.0/24`` and ``fd00:201:I::/64`` via host I.  The pod is appended
    to the topology's hosts, so ``close()`` kills its processes and deletes it.
    """
    i = host.index
    name = f"{topology.prefix}h{i}p{n}"
    topology._add_ns(name)
    gw4, gw6 = f"{POD_V4_NET}.{i}.1", f"{POD_V6_NET}:{i}::1"
    ipv4, ipv6 = f"{POD_V4_NET}.{i}.{n + 1}", f"{POD_V6_NET}:{i}::{n + 1}"
    dev = f"pod{n}"
    _ip("-n", host.name, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", name)
    # The gateway address is a /32 (/128) on every pod link of the host, and
    # each pod has a host route: pods of one host never share a subnet route.
    _ip("-n", host.name, "addr", "add", f"{gw4}/32", "dev", dev)
    _ip("-n", host.name, "-6", "addr", "add", f"{gw6}/128", "dev", dev, "nodad")
    _ip("-n", host.name, "link", "set", dev, "up")
    _ip("-n", host.name, "route", "add", f"{ipv4}/32", "dev", dev)
    _ip("-n", host.name, "-6", "route", "add", f"{ipv6}/128", "dev", dev)
    _ip("-n", name, "addr", "add", f"{ipv4}/32", "dev", "eth0")
    _ip("-n", name, "-6", "addr", "add", f"{ipv6}/128", "dev", "eth0", "nodad")
    _ip("-n", name, "link", "set", "eth0", "up")
    _ip("-n", name, "route", "add", gw4, "dev", "eth0")
    _ip("-n", name, "route", "add", "default", "via", gw4)
    _ip("-n", name, "-6", "route", "add", gw6, "dev", "eth0")
    _ip("-n", name, "-6", "route", "add", "default", "via", gw6)
    sysctl(host, "net.ipv4.ip_forward", 1)
    sysctl(host, "net.ipv6.conf.all.forwarding", 1)
    for other in topology.hosts:
        if other is not host and other.name.endswith(f"h{other.index}"):
            _ip("-n", other.name, "route", "replace", f"{POD_V4_NET}.{i}.0/24", "via", host.ipv4)
            _ip("-n", other.name, "-6", "route", "replace", f"{POD_V6_NET}:{i}::/64", "via", host.ipv6)
    pod = Host(name=name, index=i, ipv4=ipv4, ipv6=ipv6)
    pod.netns = _netns_inode(name) or 0
    topology.hosts.append(pod)
    return pod


def conntrack_count(host: Host) -> int:
    """Entries in the host's connection-tracking table (conntrack is per namespace)."""
    return int(host.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout.strip() or 0)


__all__ += ["add_pod", "blackhole", "conntrack_count", "nft", "nft_available", "sysctl"]
