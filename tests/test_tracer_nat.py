"""End to end through NAT: real BPF, network namespaces, nftables, the resolved graph.

Topology (tests/netns.py): a "node" h1 (10.200.0.1) that translates, the
way kube-proxy and a container runtime do in a node's host namespace, with
a pod behind it (10.201.1.2, fd00:201:1::2); two backends of one service
``phb-api`` on h2 and h3 (:8080 IPv4, :8081 IPv6); a "container" ``phb-shop``
on h4 (:9090) published on the node's loopback; a client ``phb-ext`` on h4.

* ClusterIP 10.96.0.10:80 and [fd00:96::10]:80 -> both api backends
  (prerouting DNAT, alternating), called by ``phb-web`` in the pod;
* published port 127.0.0.1:18080 -> shop (output-hook DNAT + masquerade),
  called by ``phb-cli`` on the node itself;
* NodePort 10.200.0.1:30080 -> api on h2 (DNAT + masquerade of marked
  connections, like kube-proxy's KUBE-MARK-MASQ), called by ``phb-ext``.

One tracer (``--nat-netns`` the node) sees every namespace; its records go
into chDB, the resolution stage resolves them, and the graph must hold the
exact connects per client -> server service and no INTERNET edge for them.
The virtual range is blackholed on the node, so an untranslated packet is
dropped rather than routed anywhere.  The NodePort here works because the
client's tracer is the node's; across real hosts a NodePort is translated on
the node, not on the client's host (see tracer/nat.py, caveats).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402
from conftest import require as _need  # noqa: E402

pytestmark = [pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]

SERVER = r"""
import ctypes, select, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
listeners = []
for arg in sys.argv[2:]:
    ip, port = arg.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port))); s.listen(512); listeners.append(s)
print("ready", flush=True)
n = 0
while True:
    r, _, _ = select.select(listeners + [sys.stdin], [], [])
    if sys.stdin in r:
        break
    for s in r:
        c, _ = s.accept(); c.recv(16); c.sendall(b"y"); c.close(); n += 1
print(n, flush=True)
"""

CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
for line in sys.stdin:
    host, port, count = line.split()
    ok = 0
    for _ in range(int(count)):
        c = socket.create_connection((host, int(port)), timeout=5)
        c.sendall(b"x"); c.recv(16); c.close(); ok += 1
    print(ok, flush=True)
"""

RULES = """
table ip phobos_test {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.200.0.2 . 8080, 1 : 10.200.0.3 . 8080 }
    ip daddr 10.200.0.1 tcp dport 30080 meta mark set 0x4000 dnat to 10.200.0.2:8080
  }
  chain out { type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.1 tcp dport 18080 dnat to 10.200.0.4:9090
  }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    meta mark 0x4000 masquerade
    ip saddr 127.0.0.0/8 oifname "eth0" masquerade
  }
}
table ip6 phobos_test {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip6 daddr fd00:96::10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : [fd00:200::2] . 8081, 1 : [fd00:200::3] . 8081 }
  }
}
"""

#: (client, address, port, connections)
CALLS = [("phb-web", "10.96.0.10", 80, 10), ("phb-web", "fd00:96::10", 80, 6),
         ("phb-cli", "127.0.0.1", 18080, 3), ("phb-ext", "10.200.0.1", 30080, 4)]
EXPECTED = {("phb-web", "phb-api"): 16, ("phb-cli", "phb-shop"): 3, ("phb-ext", "phb-api"): 4}


@pytest.fixture
def nat_topology(bpf_host, netns_host):
    ok, why = netns.available()
    _need(ok, why)
    topo = netns.Topology(4)
    hosts = topo.__enter__()
    try:
        node, b1, b2, h4 = hosts
        pod = netns.add_pod(topo, node)
        netns.nft(node, RULES)
        netns.sysctl(node, "net.ipv4.conf.eth0.route_localnet", 1)
        netns.blackhole(node, "10.96.0.0/16", "fd00:96::/64")
        yield topo, node, b1, b2, h4, pod
    finally:
        topo.close()


def _server(host, name, *endpoints):
    proc = host.python(SERVER, name, *endpoints)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _accepted(proc) -> int:
    proc.stdin.close()
    return int(proc.stdout.readline().strip())


def test_clients_of_virtual_addresses_are_drawn_to_the_backends_exactly(nat_topology, store):
    from api.catalog.lookups import INTERNET
    from api.ingest.batches import ingest_batch
    from api.resolution.stage import Resolver
    from api.resolution.tcp import Window
    from api.views import reads
    from test_tracer_bpf import AgentRun
    from tracer.records import normalize_ip

    topo, node, b1, b2, h4, pod = nat_topology
    agent = AgentRun("--nat-netns", node.name)
    try:
        # IPv6 on its own port: the tracer keys listeners by (netns, port)
        api1 = _server(b1, "phb-api", f"{b1.ipv4}:8080", f"{b1.ipv6}:8081")
        api2 = _server(b2, "phb-api", f"{b2.ipv4}:8080", f"{b2.ipv6}:8081")
        shop = _server(h4, "phb-shop", f"{h4.ipv4}:9090")
        clients = {"phb-web": pod.python(CLIENT, "phb-web"), "phb-cli": node.python(CLIENT, "phb-cli"),
                   "phb-ext": h4.python(CLIENT, "phb-ext")}
        for name, ip, port, count in CALLS:
            proc = clients[name]
            proc.stdin.write(f"{ip} {port} {count}\n")
            proc.stdin.flush()
            assert int(proc.stdout.readline()) == count, (name, ip)
        time.sleep(2.5)  # two more drains
        summary = agent.stop()
    except BaseException:
        agent.proc.kill()
        raise
    accepted = {"api1": _accepted(api1), "api2": _accepted(api2), "shop": _accepted(shop)}
    assert accepted == {"api1": 5 + 3 + 4, "api2": 5 + 3, "shop": 3}
    assert summary["nat"]["enabled"] == 1 and summary["nat"]["records_translated"] >= 4
    assert summary["nat"]["dropped"] == summary["nat"]["overruns"] == summary["nat"]["errors"] == 0

    # The tracer sees the whole machine: keep the records of this test's
    # namespaces and servers (other runs may use the same addresses).
    spaces = {h.netns for h in topo.hosts}
    servers = {p.pid for p in (api1, api2, shop)}
    conns = [r for r in agent.records if "direction" in r and r["netns"] in spaces]
    lis = [r for r in agent.records if "direction" not in r and r["pid"] in servers]
    out = [r for r in conns if r["direction"] == "outbound"]
    # the tracer's own view: backends in remote_ip, the virtual address in nat_ip
    by_backend: dict = {}
    for r in out:
        by_backend[(r["service"], r["remote_ip"], r["nat_ip"], r["nat_port"])] = \
            by_backend.get((r["service"], r["remote_ip"], r["nat_ip"], r["nat_port"]), 0) + r["connects"]
    n = normalize_ip
    assert {k: v for k, v in by_backend.items() if v} == {
        ("phb-web", n(b1.ipv4), n("10.96.0.10"), 80): 5, ("phb-web", n(b2.ipv4), n("10.96.0.10"), 80): 5,
        ("phb-web", b1.ipv6, "fd00:96::10", 80): 3, ("phb-web", b2.ipv6, "fd00:96::10", 80): 3,
        ("phb-cli", n(h4.ipv4), n("127.0.0.1"), 18080): 3,
        ("phb-ext", n(b1.ipv4), n(node.ipv4), 30080): 4,
    }
    # source NAT: the client's address as the backend saw it
    assert {r["local_ip"] for r in out if r["service"] in ("phb-cli", "phb-ext")} == {n(node.ipv4)}

    assert not ingest_batch(store, "connections", conns, batch_id="nat-c").rejected
    assert not ingest_batch(store, "listeners", lis, batch_id="nat-l").rejected
    later = int(time.time()) + 7200
    Resolver(store, now=lambda: later).run_once(budget_s=120)
    win = Window.at(int(time.time()) // 60 * 60 + 120, 900)
    edges = reads.graph_rows(store, win)
    # only this test's namespaces were stored: every edge is one of its calls
    assert {(e["s_name"], e["d_name"]): e["connects"] for e in edges} == EXPECTED
    assert not [e for e in edges if INTERNET in (e["s_name"], e["d_name"])]
    assert reads.graph_rows(store, win, resolved=False) == edges
