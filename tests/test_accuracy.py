"""The accuracy benchmark's short form: the map of a small NATed fleet is exact.

``tests/bench/bench_accuracy.py`` builds hosts and pods in network
namespaces, a ClusterIP with two backends and a published port (nftables
NAT), pooled and short-lived connections, a failing dependency and a deploy
that hands an address to another service; the tracer traces it, the stage
resolves it, and the API's region view must draw exactly the edges and
counts that were sent. Needs root, BPF and nftables (skipped locally
without them, failed in CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

pytestmark = [pytest.mark.bpf, pytest.mark.netns, pytest.mark.slow]


def test_the_map_of_a_natted_fleet_is_exact(bpf_host, netns_host):
    import bench_accuracy as bench

    truth = bench.Truth()
    records, summary, _ = bench.run_fleet(1, truth)
    assert all(v == 0 for v in summary["map_drops"].values()), summary
    connects, failures, _meta = bench.map_edges(records)
    result = bench.score(truth, connects, failures)
    # what was sent: every kind of edge the fleet has, failures included
    assert set(truth.connects) == {("web", "api"), ("api", "db"), ("batch", "ledger"), ("batch", "billing"),
                                   ("batch", "shop")}
    assert truth.failures[("api", "db")] > 0
    assert (result["precision"], result["recall"]) == (1.0, 1.0), (result["wrong_edges"], result["missed_edges"], connects)
    assert result["count_error"] == 0 and result["failure_error"] == 0, (result, connects, truth.connects)
