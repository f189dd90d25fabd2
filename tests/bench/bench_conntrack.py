"""Benchmark: what one conntrack drain costs with 100,000 entries in the table.

Run (root, nftables):  .venv/bin/python tests/bench/bench_conntrack.py [--entries 100000] [--repeat 3]

Each scenario gets a network namespace of its own (conntrack is per
namespace), an nftables output-hook DNAT 127.0.0.1:18080 -> 127.0.0.1:8080
and real TCP connections made inside it: each is opened, closed at once and
accepted by a listener in a second process, so its entry stays in TIME_WAIT
(the namespace's TIME_WAIT timeout is raised to 10 min so nothing expires
during the run).  Filler entries are either plain TCP connections to
127.0.0.1:8080 (no NAT) or UDP datagrams to distinct ports (no reply, so one
entry each).  Scenarios, ``--entries`` in total each:

* ``all-dnat``: every entry a DNATed TCP connection (worst case: all parsed);
* ``dnat+tcp``: 10 % DNAT, 90 % plain TCP: the kernel sends all TCP entries,
  userspace compares tuples; then again with ``status_filter=True`` (the
  kernel sends only entries with a NAT status bit);
* ``dnat+udp``: 10 % DNAT, 90 % UDP: the kernel's TCP filter drops the rest;
* ``all-dnat`` with ``max_entries`` at 10 %: the cap, counted drops;
* events: the table is flushed while a reader listens: how many DESTROY
  events one drain reads, and overruns with the default 8 MiB buffer.

Prints per drain: entries in the table, entries parsed, translations, wall
time and CPU time (median of ``--repeat``), and the drain's peak Python
allocation (tracemalloc, in a separate run since tracing slows it down) and
this process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer.conntrack import NFNL_SUBSYS_CTNETLINK, ConntrackReader  # noqa: E402

RULES = """
table ip bench {
  chain out { type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.1 tcp dport 18080 dnat to 127.0.0.1:8080; }
}
"""

# Inside the namespace: a listener process accepts and closes; this process
# makes N_DNAT connections through the DNAT, N_TCP direct ones, N_UDP datagrams.
# DNAT and direct connections use different source addresses, so their reply
# tuples never clash; 20,000 connections per source address.
GENERATOR = r"""
import os, socket, sys
n_dnat, n_tcp, n_udp = map(int, sys.argv[1:4])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8080)); srv.listen(4096)
if os.fork() == 0:
    srv.settimeout(3)
    try:
        while True:
            srv.accept()[0].close()
    except OSError:
        os._exit(0)
srv.close()
def connect(n, first_ip, port):
    for i in range(n):
        c = socket.socket()
        c.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: port chosen per destination
        c.bind((f"127.0.{first_ip + i // 20000}.1", 0))
        c.connect(("127.0.0.1", port)); c.close()
connect(n_dnat, 1, 18080)
connect(n_tcp, 100, 8080)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n_udp):
    u.sendto(b"x", (f"127.1.{i // 60000}.1", 1024 + i % 60000))
os.wait()
"""


def sh(*cmd: str, input: str | None = None) -> str:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=True, timeout=600).stdout


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        for key, value in (("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 600),
                           ("net.netfilter.nf_conntrack_udp_timeout", 600),
                           ("net.ipv4.ip_local_port_range", "1024 65535")):
            sh("ip", "netns", "exec", self.name, "sysctl", "-q", "-w", f"{key}={value}")
        sh("ip", "netns", "exec", self.name, "nft", "-f", "-", input=RULES)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def fill(self, dnat: int, tcp: int = 0, udp: int = 0) -> float:
        started = time.perf_counter()
        sh("ip", "netns", "exec", self.name, sys.executable, "-c", GENERATOR, str(dnat), str(tcp), str(udp))
        return time.perf_counter() - started

    def count(self) -> int:
        return int(sh("ip", "netns", "exec", self.name, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))

    def flush(self) -> None:
        """Delete every entry (IPCTNL_MSG_CT_DELETE without attributes), as conntrack -F does."""
        s = sh("ip", "netns", "exec", self.name, sys.executable, "-c", FLUSH)
        assert s.strip() == "0", s


FLUSH = f"""
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
body = struct.pack("=BBH", 0, 0, 0)
s.send(struct.pack("=IHHII", 20, ({NFNL_SUBSYS_CTNETLINK} << 8) | 2, 0x1 | 0x4, 1, 0) + body)
print(-struct.unpack_from("=i", s.recv(4096), 16)[0])
"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(label: str, ns: Namespace, repeat: int, **reader_args) -> None:
    with ConntrackReader(ns.name, events=False, **reader_args) as reader:
        drains = [reader.drain() for _ in range(repeat)]
        tracemalloc.start()
        reader.drain()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    d = drains[-1]
    wall = statistics.median(x.seconds for x in drains)
    cpu = statistics.median(x.cpu_seconds for x in drains)
    print(f"{label:<34} table {ns.count():>7}  parsed {d.entries:>7}  dropped {d.dropped:>6}  "
          f"translations {len(d.translations):>3} ({sum(t.connections for t in d.translations):>6} conns)  "
          f"wall {wall * 1000:7.1f} ms  cpu {cpu * 1000:7.1f} ms  "
          f"us/entry {cpu / max(d.entries + d.dropped, 1) * 1e6:5.2f}  "
          f"peak alloc {peak / 2**20:5.1f} MiB  rss {rss_mb():5.0f} MiB", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="example: sudo .venv/bin/python tests/bench/bench_conntrack.py --entries 100000")
    ap.add_argument("--entries", type=int, default=100_000, help="conntrack entries per scenario")
    ap.add_argument("--repeat", type=int, default=3, help="drains per measurement (median)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, conntrack over netlink)", file=sys.stderr)
        return 2
    n, tenth = args.entries, args.entries // 10
    print(f"kernel {os.uname().release}, nf_conntrack_buckets "
          f"{open('/proc/sys/net/netfilter/nf_conntrack_buckets').read().strip()} (shared by all namespaces), "
          f"python {sys.version.split()[0]}")
    with Namespace("phbbench0") as ns:
        measure("empty table", ns, args.repeat)
    with Namespace("phbbench1") as ns:
        # With net.netfilter.nf_conntrack_events=2 (the default) the kernel
        # arms events only for entries created while a listener exists: this
        # reader listens before the table is filled.
        listening = ConntrackReader(ns.name, max_entries=4 * n).open()
        print(f"  filled {n} DNAT connections in {ns.fill(n):.1f} s")
        listening.drain()
        measure("all-dnat", ns, args.repeat)
        measure("all-dnat, status_filter", ns, args.repeat, status_filter=True)
        measure(f"all-dnat, max_entries={tenth}", ns, args.repeat, max_entries=tenth)
        with listening:
            ns.flush()
            time.sleep(0.5)
            t0 = time.perf_counter()
            d = listening.drain()
            print(f"{'events: flush of the table':<34} destroy events read {d.entries:>7}  overruns {d.overruns}  "
                  f"wall {(time.perf_counter() - t0) * 1000:7.1f} ms  cpu {d.cpu_seconds * 1000:7.1f} ms  "
                  f"(rcvbuf {listening.rcvbuf >> 20} MiB)")
    with Namespace("phbbench2") as ns:
        print(f"  filled {tenth} DNAT + {n - tenth} plain TCP in {ns.fill(tenth, tcp=n - tenth):.1f} s")
        measure("dnat+tcp", ns, args.repeat)
        measure("dnat+tcp, status_filter", ns, args.repeat, status_filter=True)
    with Namespace("phbbench3") as ns:
        print(f"  filled {tenth} DNAT + {n - tenth} UDP in {ns.fill(tenth, udp=n - tenth):.1f} s")
        measure("dnat+udp", ns, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
