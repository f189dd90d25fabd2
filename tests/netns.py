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
