"""Benchmark: how exact the map is, against traffic whose truth is known.

Run (root, BPF, nftables):
    .venv/bin/python tests/bench/bench_accuracy.py [--scale 1] [--json] [--no-nat]

Builds a small fleet in network namespaces it creates (``tests/netns.py``:
three hosts on a bridge, three pods behind the first, the "node"), runs the
tracer on the shared kernel (reading the node's connection tracking), drives real TCP traffic whose every connection it counts
itself, then stores the tracer's records, lets the resolution stage resolve
them and reads the service-level edges from the API's region view - the
graph a user sees. It prints, per edge, what was sent and what the map says,
then the **precision and recall of the service-level edges** and the
**relative error of the connection and failure counts**.

The fleet (service = the processes' task name):

* ``web`` in two pods behind host 1, ``shop`` in a third, ``batch`` on
  host 1 itself, ``api`` on hosts 2 and 3, ``db`` on host 3, ``ledger``
  then ``billing`` on host 2;
* **ClusterIP**: ``web`` connects to 10.96.0.10:80, which host 1 translates
  (nftables DNAT in prerouting, as kube-proxy does for pods) to ``api`` on
  hosts 2 and 3 - two backends, one service;
* **published port**: ``batch`` connects to 127.0.0.1:18080, which host 1
  translates to ``shop`` in its pod (output-hook DNAT and masquerade, as a
  container runtime does);
* **pooled and short-lived**: ``web`` keeps connections to ``api`` open
  for the whole run beside many one-shot ones;
* **a failing dependency**: host 3 resets every second connect to ``db``;
* **a deploy hands an address to another service**: ``ledger`` listens on
  host 2 port 7000, stops, and ``billing`` takes the same address and port;
  ``batch`` talks to both in turn.

The virtual range gets a blackhole route, so a packet NAT did not translate
is dropped, never routed out. Every connection stays inside the namespaces.
Records of processes outside them (anything else this machine runs, other
tests with namespaces of their own included) are left out before they are
stored: connections by namespace, listeners by the servers' pids. One tracer sees every namespace and reports
them all as one host, so the servers, which listen on the wildcard address
as most do, listen on ports of their own: a listener on ``::`` is placed by
the addresses its host accepted on, and here every namespace is that host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

VIRTUAL = "10.96.0.10"
NODE_RULES = f"""
table ip phobos_bench {{
  chain pre {{ type nat hook prerouting priority -100; policy accept;
    ip daddr {VIRTUAL} tcp dport 80 dnat to numgen inc mod 2 map {{ 0 : 10.200.0.2, 1 : 10.200.0.3 }}:8080; }}
  chain out {{ type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.1 tcp dport 18080 dnat to {{shop}}:8090; }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr 127.0.0.0/8 masquerade; }}
}}
"""
# Every second connect to db is reset: a dependency that fails half the time.
FAILING_RULES = """
table inet phobos_bench {
  chain in { type filter hook input priority 0; policy accept;
    tcp dport 5432 tcp flags & (syn | ack) == syn numgen inc mod 2 == 0 reject with tcp reset; }
}
"""


class Truth:
    """What the benchmark sent: attempts and failures per (client, server) service."""

    def __init__(self) -> None:
        self.connects: dict[tuple[str, str], int] = {}
        self.failures: dict[tuple[str, str], int] = {}

    def add(self, client: str, server: str, attempts: int, failed: int) -> None:
        key = (client, server)
        self.connects[key] = self.connects.get(key, 0) + attempts
        self.failures[key] = self.failures.get(key, 0) + failed


def run_fleet(scale: int, truth: Truth, nat: bool = True) -> tuple[list[dict], dict, set[int]]:
    """Build the fleet, trace it while the traffic runs; the records, the tracer's summary, the netns inodes."""
    import netns
    from test_tracer_bpf import AgentRun, Client, start_server

    n = max(1, scale)
    topo = netns.Topology(3, prefix=f"pha{os.getpid() % 10000}")
    with topo as topo_hosts:
        h1, h2, h3 = topo_hosts[:3]
        web_pods = [netns.add_pod(topo, h1, 1), netns.add_pod(topo, h1, 2)]
        shop_pod = netns.add_pod(topo, h1, 3)
        netns.nft(h1, NODE_RULES.replace("{shop}", shop_pod.ipv4))
        netns.blackhole(h1, "10.96.0.0/16")
        netns.sysctl(h1, "net.ipv4.conf.all.route_localnet", 1)
        netns.nft(h3, FAILING_RULES)
        inodes = {h.netns for h in topo.hosts}

        agent = AgentRun(*(("--nat-netns", h1.name) if nat else ("--no-nat",)))
        try:
            servers = [start_server(h2, "api", "8080"), start_server(h3, "api", "8080"),
                       start_server(h3, "db", "5432"), start_server(shop_pod, "shop", "8090")]
            ledger = start_server(h2, "ledger", "7000")
            web, web2 = Client(web_pods[0], "web"), Client(web_pods[1], "web")
            api2, batch = Client(h3, "api"), Client(h1, "batch")

            def connect(client: Client, name: str, server: str, host: str, port: int, count: int,
                        keep: int = 0) -> None:
                failed = client.do(f"connect {host} {port} {count} {keep}")
                truth.add(name, server, count, failed)

            # Pooled: kept open the whole run; short-lived: one connect, one close.
            connect(web, "web", "api", VIRTUAL, 80, 6, keep=6)
            connect(web, "web", "api", VIRTUAL, 80, 40 * n)
            connect(web2, "web", "api", VIRTUAL, 80, 30 * n)
            connect(api2, "api", "db", h3.ipv4, 5432, 20 * n)
            connect(batch, "batch", "ledger", h2.ipv4, 7000, 15 * n)
            connect(batch, "batch", "shop", "127.0.0.1", 18080, 12 * n)
            time.sleep(1.5)
            # The deploy: ledger goes, billing takes its address and port.
            ledger.kill()
            ledger.wait(10)
            time.sleep(1.2)
            servers.append(start_server(h2, "billing", "7000"))
            time.sleep(1.2)
            connect(batch, "batch", "billing", h2.ipv4, 7000, 11 * n)
            connect(web, "web", "api", VIRTUAL, 80, 10 * n)
            time.sleep(2.5)
            web.do("close")
            time.sleep(1.5)
        finally:
            summary = agent.stop()
    # Listener records carry no namespace: they are the fleet's by their pid.
    pids = {p.pid for p in servers} | {ledger.pid}
    kept = [r for r in agent.records if (r["netns"] in inodes if "direction" in r else r["pid"] in pids)]
    return kept, summary, inodes


def map_edges(records: list[dict]) -> tuple[dict, dict, dict]:
    """Store the records, resolve them with the stage, read the API's region view of the services.

    Returns connects and failures per (client, server) node as the map
    draws them, and what the view said about itself."""
    from api.app import create_app
    from api.commands.phobos import resolve_pending
    from api.ingest.batches import ingest_batch
    from api.storage import open_store
    from tracer.records import parse_ts

    directory = tempfile.mkdtemp(prefix="phobos_accuracy_")
    store = open_store(f"chdb://{directory}", role="bench")
    store.migrate()
    for kind in ("listeners", "connections"):
        batch = [r for r in records if ("direction" in r) == (kind == "connections")]
        if batch:
            ingest_batch(store, kind, batch)
    stamps = [parse_ts(r["ts"]) for r in records]
    first, last = min(stamps), max(stamps)
    # The traffic has stopped, so every minute, the current one too, is
    # complete: the stage may resolve them all now (a settle delay of -60 s).
    end = (last // 60 + 1) * 60
    resolve_pending(store, out=open(os.devnull, "w"), settle_s=-60)
    window = end - first // 60 * 60
    client = create_app({"STORE": store, "CACHE_SECONDS": 0}).test_client()
    view = client.get(f"/api/v1/areas/unassigned?at={end}&window={window}").get_json()
    connects, failures = {}, {}
    for c in view["connections"]:
        meta = c.get("metadata", {})
        connects[(c["source"], c["target"])] = int(meta.get("connects", 0))
        failures[(c["source"], c["target"])] = int(meta.get("failures", 0))
    store.close()
    return connects, failures, view.get("metadata", {})


def score(truth: Truth, connects: dict, failures: dict) -> dict:
    """Precision and recall of the service-level edges, relative error of the counts."""
    true_edges = {e for e, n in truth.connects.items() if n}
    seen = {e for e, n in connects.items() if n}
    hits = true_edges & seen
    sent = sum(truth.connects.values())
    count_error = sum(abs(connects.get(e, 0) - truth.connects.get(e, 0)) for e in true_edges | seen) / max(sent, 1)
    failed = sum(truth.failures.values())
    failure_error = sum(abs(failures.get(e, 0) - truth.failures.get(e, 0)) for e in true_edges | seen) / max(failed, 1)
    return {"precision": len(hits) / len(seen) if seen else 0.0, "recall": len(hits) / len(true_edges),
            "count_error": count_error, "failure_error": failure_error, "edges_true": len(true_edges),
            "edges_seen": len(seen), "connects_sent": sent, "failures_sent": failed,
            "wrong_edges": sorted(f"{a} -> {b}" for a, b in seen - true_edges),
            "missed_edges": sorted(f"{a} -> {b}" for a, b in true_edges - seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="multiplies the short-lived connections")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--no-nat", action="store_true", help="trace without following NAT, for comparison")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (BPF, network namespaces, nftables)", file=sys.stderr)
        return 2
    truth = Truth()
    started = time.time()
    records, summary, _ = run_fleet(args.scale, truth, nat=not args.no_nat)
    connects, failures, _meta = map_edges(records)
    result = score(truth, connects, failures)
    result["tracer_drops"] = summary.get("map_drops")
    result["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'edge':28} {'sent':>6} {'map':>6} {'failed':>7} {'map':>6}")
    for edge in sorted(set(truth.connects) | set(connects)):
        print(f"{edge[0] + ' -> ' + edge[1]:28} {truth.connects.get(edge, 0):6} {connects.get(edge, 0):6} "
              f"{truth.failures.get(edge, 0):7} {failures.get(edge, 0):6}")
    print(f"\nservice-level edges: precision {result['precision']:.3f}, recall {result['recall']:.3f} "
          f"({result['edges_seen']} drawn, {result['edges_true']} true)")
    print(f"connection counts: relative error {result['count_error']:.3f} of {result['connects_sent']} sent; "
          f"failures: {result['failure_error']:.3f} of {result['failures_sent']}")
    if result["wrong_edges"]:
        print("drawn but not sent:", ", ".join(result["wrong_edges"]))
    if result["missed_edges"]:
        print("sent but not drawn:", ", ".join(result["missed_edges"]))
    print(f"tracer map drops: {result['tracer_drops']}; {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
