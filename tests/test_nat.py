"""tracer/nat.py: connection records through destination NAT, and what resolution makes of them.

The unit tests feed records as ``tracer.aggregate.build_records`` makes them
and translations as ``tracer.conntrack`` reports them; the store tests ingest
the translated records with the backends' listeners and inbound records into
chDB and read the resolved graph (no change to resolution is needed: the
records name the backends).
"""

from __future__ import annotations

import random

import pytest

from api.catalog.lookups import INTERNET
from api.ingest.batches import ingest_batch
from api.resolution.stage import Resolver
from api.resolution.tcp import Window
from api.views import reads
from factories import T0, connection, listener
from tracer import nat, records
from tracer.conntrack import Translation
from tracer.nat import SPLIT_BY, apply, split
from tracer.records import format_ts, normalize_ip, validate

POD, VIP = "10.201.1.2", "10.96.0.10"
B1, B2, B3 = "10.200.0.2", "10.200.0.3", "10.200.0.4"


def rec(**kw):
    """A normalised outbound record (what build_records emits)."""
    hist = [0] * records.HANDSHAKE_BUCKETS
    hist[3], hist[9] = 7, 3
    base = dict(local_ip=POD, remote_ip=VIP, remote_port=80, connects=10, closes=8, failures=0, open=2,
                duration_ms_sum=1000, bytes_sent=777, bytes_received=12345, handshakes=10,
                handshake_us_sum=52000, handshake_hist=hist, retransmits=5, aborts=1)
    base.update(kw)
    r = connection(**base)
    for k in ("host_ip", "local_ip", "remote_ip"):
        r[k] = normalize_ip(r[k])
    return r


def tr(backend, connections, new=None, open_=0, client=POD, vip=VIP, vport=80, bport=8080, source=None):
    return Translation(client, vip, vport, backend, bport, source or client, connections,
                       connections if new is None else new, open_)


# --- the split ---------------------------------------------------------------------


@pytest.mark.parametrize("total, weights, want", [
    (10, [1, 1, 1], [4, 3, 3]),
    (7, [5, 2], [5, 2]),
    (1, [1, 3], [0, 1]),
    (0, [3, 4], [0, 0]),
    (5, [0, 0], [5, 0]),
    (5, [0, 2, 0], [0, 5, 0]),
    (3, [2, 2, 2, 2], [1, 1, 1, 0]),
    (2**64 - 1, [1, 2], [6148914691236517205, 12297829382473034410]),
])
def test_split_is_exact_by_largest_remainder(total, weights, want):
    assert split(total, weights) == want
    assert sum(split(total, weights)) == total


def test_split_always_sums_exactly():
    rnd = random.Random(13)
    for _ in range(2000):
        weights = [rnd.choice((0, 0, 1, 2, 7, 1000)) for _ in range(rnd.randint(1, 6))]
        total = rnd.choice((0, 1, 3, 17, 10**6, 2**32 - 1))
        parts = split(total, weights)
        assert sum(parts) == total and min(parts) >= 0
        if sum(weights):
            # no part is further than one from its exact share
            assert all(abs(p - total * w / sum(weights)) < 1 + 1e-6 * total for p, w in zip(parts, weights))


# --- records ------------------------------------------------------------------------


def test_a_virtual_address_becomes_one_record_per_backend_with_exact_sums():
    r = rec()
    result = apply([r], [tr(B1, 6, open_=1), tr(B2, 4, open_=1)])
    out = result.records
    assert (result.translated, result.backends, result.translations) == (1, 2, 2)
    assert [(o["remote_ip"], o["remote_port"], o["nat_ip"], o["nat_port"]) for o in out] == [
        (normalize_ip(B1), 8080, normalize_ip(VIP), 80), (normalize_ip(B2), 8080, normalize_ip(VIP), 80)]
    assert [o["connects"] for o in out] == [6, 4]
    assert [o["open"] for o in out] == [1, 1]
    for name in SPLIT_BY:
        assert sum(o[name] for o in out) == r[name], name
    # the handshake histogram is split bucket by bucket, like the handshakes it counts
    assert [sum(b) for b in zip(*(o["handshake_hist"] for o in out))] == r["handshake_hist"]
    assert [o["handshakes"] for o in out] == [sum(o["handshake_hist"]) for o in out] == [6, 4]
    for o in out:
        validate("connections", o)
        # everything that names the client stays as it was
        assert {k: o[k] for k in ("pid", "netns", "service", "local_ip", "local_port", "ts", "direction")} == \
            {k: r[k] for k in ("pid", "netns", "service", "local_ip", "local_port", "ts", "direction")}
    assert "nat_ip" not in r, "the input is not changed"


def test_weights_fall_back_to_all_connections_when_none_is_new_or_open():
    # long-lived connections: nothing new this interval, nothing established at the drain
    out = apply([rec(connects=0, closes=3, open=4)], [tr(B1, 3, new=0), tr(B2, 1, new=0)]).records
    assert [(o["closes"], o["open"]) for o in out] == [(2, 3), (1, 1)]
    # new connections decide connects, established ones decide open
    out = apply([rec(connects=4, closes=0, open=4)],
                [tr(B1, 5, new=4, open_=1), tr(B2, 3, new=0, open_=3)]).records
    assert [(o["connects"], o["open"]) for o in out] == [(4, 1), (0, 3)]


def test_pieces_with_nothing_to_count_are_left_out_but_one_is_kept():
    quiet = dict(handshakes=0, handshake_us_sum=0, handshake_hist=[], retransmits=0, aborts=0)
    out = apply([rec(connects=1, closes=1, open=0, duration_ms_sum=0, bytes_sent=0, bytes_received=0, **quiet)],
                [tr(B1, 1), tr(B2, 0, new=0), tr(B3, 0, new=0)]).records
    assert [o["remote_ip"] for o in out] == [normalize_ip(B1)]
    empty = rec(connects=0, closes=0, open=0, duration_ms_sum=0, bytes_sent=0, bytes_received=0, **quiet)
    out = apply([empty], [tr(B1, 1), tr(B2, 1)]).records
    assert len(out) == 1 and out[0]["remote_ip"] == normalize_ip(B1) and out[0]["nat_port"] == 80


def test_records_without_a_translation_and_inbound_records_are_untouched():
    inbound = rec(direction="inbound", local_ip=B1, local_port=8080, remote_ip=POD, remote_port=0,
                  connects=0, accepts=5)
    plain = rec(remote_ip="10.200.0.9", remote_port=5432)
    other_port = rec(remote_port=443)
    # a translation whose virtual address is the inbound record's remote end: still not applied
    result = apply([inbound, plain, other_port], [tr(B1, 5), tr(B2, 5, client=B1, vip=POD, vport=0)])
    assert result.translated == 0
    for before, after in zip((inbound, plain, other_port), result.records):
        assert after == dict(before, nat_ip="::", nat_port=0)
        validate("connections", after)


def test_translations_without_destination_nat_are_ignored():
    # source NAT only: the socket's destination is where the connection went
    snat_only = Translation(POD, B1, 8080, B1, 8080, "10.200.0.1", 3, 3, 0)
    result = apply([rec(remote_ip=B1, remote_port=8080)], [snat_only])
    assert result.translated == 0 and result.translations == 0
    assert result.records[0]["remote_ip"] == normalize_ip(B1) and result.records[0]["nat_port"] == 0


def test_several_clients_of_one_virtual_address_each_get_their_own_backends():
    pod2 = "10.201.1.3"
    r1, r2 = rec(pid=1, connects=4), rec(pid=2, local_ip=pod2, connects=3, closes=3, open=0)
    ts = [tr(B1, 4, client=POD), tr(B2, 2, client=pod2), tr(B3, 1, client=pod2)]
    out = apply([r1, r2], ts).records
    got = {(o["pid"], o["remote_ip"]): o["connects"] for o in out}
    assert got == {(1, normalize_ip(B1)): 4, (2, normalize_ip(B2)): 2, (2, normalize_ip(B3)): 1}
    # two processes behind one address share its proportions, each exact in its sums
    out = apply([rec(pid=1, connects=5), rec(pid=2, connects=2, closes=2, open=0)], [tr(B1, 3), tr(B2, 1)]).records
    assert [(o["pid"], o["connects"]) for o in out] == [(1, 4), (1, 1), (2, 2), (2, 0)]  # (2, 0): its bytes


def test_ipv6_and_ipv4_translations_match_the_records_normalised_addresses():
    v6 = rec(local_ip="fd00:201:1::2", remote_ip="FD00:96::10", connects=2, closes=2, open=0)
    v4 = rec(connects=1, closes=1, open=0)
    ts = [tr("fd00:200::2", 1, client="fd00:201:1::2", vip="fd00:96::10"),
          tr("fd00:200::3", 1, client="fd00:201:1::2", vip="fd00:96::10"),
          tr(B1, 1)]
    out = apply([v6, v4], ts).records
    assert [(o["remote_ip"], o["nat_ip"], o["connects"]) for o in out] == [
        ("fd00:200::2", "fd00:96::10", 1), ("fd00:200::3", "fd00:96::10", 1),
        ("::ffff:10.200.0.2", "::ffff:10.96.0.10", 1)]
    # a dual-stack socket's IPv4-mapped addresses match a plain IPv4 translation
    mapped = rec(local_ip="::ffff:" + POD, remote_ip="::ffff:" + VIP)
    assert apply([mapped], [tr(B1, 1)]).records[0]["remote_ip"] == "::ffff:10.200.0.2"


def test_source_nat_puts_the_address_the_backend_sees_in_local_ip():
    """The published port on loopback: 127.0.0.1 -> 127.0.0.1:18080 goes to the container,
    masqueraded to the host's address, which the container's inbound record shows."""
    r = rec(local_ip="127.0.0.1", remote_ip="127.0.0.1", remote_port=18080, connects=3, closes=3, open=0)
    t = Translation("127.0.0.1", "127.0.0.1", 18080, B1, 8080, "10.200.0.1", 3, 3, 0)
    (o,) = apply([r], [t]).records
    assert (o["local_ip"], o["remote_ip"], o["remote_port"], o["nat_ip"], o["nat_port"]) == (
        "::ffff:10.200.0.1", "::ffff:10.200.0.2", 8080, "::ffff:127.0.0.1", 18080)


def test_connects_of_many_intervals_stay_exact():
    """Random intervals: every counter of every record adds up over its pieces."""
    rnd = random.Random(7)
    for _ in range(300):
        backends = [f"10.200.0.{i}" for i in range(2, 2 + rnd.randint(1, 4))]
        ts = [tr(b, rnd.randint(0, 9), new=rnd.randint(0, 9), open_=rnd.randint(0, 3)) for b in backends]
        r = rec(connects=rnd.randint(0, 50), closes=rnd.randint(0, 50), failures=rnd.randint(0, 5),
                open=rnd.randint(0, 20), duration_ms_sum=rnd.randint(0, 10**9), bytes_sent=rnd.randint(0, 10**12))
        out = apply([r], ts).records
        for name in SPLIT_BY:
            assert sum(o[name] for o in out) == r[name]


def test_records_of_the_whole_pipeline_pass_the_contract():
    from tracer import aggregate

    class Edge:
        netns, pid, direction, local_ip, local_port, remote_ip, remote_port = 1, 7, "outbound", POD, 0, VIP, 80

    counts = {Edge(): aggregate.EdgeCounts(connects=3, closes=3, comm="curl")}
    conns, _ = aggregate.build_records(counts, [], ts=T0, interval_s=10, dc="", host="h", host_ip="10.0.0.1",
                                       attribute=lambda *_: {})
    out = apply(conns, [tr(B1, 2), tr(B2, 1)]).records
    assert [o["connects"] for o in out] == [2, 1]
    for o in out:
        assert set(o) == {f.name for f in records.CONNECTION_FIELDS}
        validate("connections", o)
    defaults = {f.name: f.default for f in records.CONNECTION_FIELDS}
    assert (nat.NO_NAT_IP, nat.NO_NAT_PORT) == (defaults["nat_ip"], defaults["nat_port"])


# --- resolution of translated records (chDB) --------------------------------------------

LATER = T0 + 6 * 3600


def resolved(store, at=T0 + 300, window=240):
    r = Resolver(store, now=lambda: LATER)
    r.run_once(budget_s=120)
    return {(e["s_name"], e["d_name"]): e for e in reads.graph_rows(store, Window.at(at, window))}


def _ingest(store, conns, lis):
    ingest_batch(store, "connections", conns, batch_id=f"c{random.random()}")
    ingest_batch(store, "listeners", lis, batch_id=f"l{random.random()}")


def test_translated_records_resolve_to_the_backends_and_are_counted_once(store):
    """web (pod 10.201.1.2 on host n1) calls the ClusterIP 10.96.0.10:80 of api, two backends
    on hosts h2/h3; both backends are traced, so their inbound records of the same
    connections must not be counted again; no INTERNET edge."""
    ts = format_ts(T0 + 120)
    client = rec(ts=ts, host="n1", host_ip="10.200.0.1", service="web", pod="web-1", connects=10, closes=10, open=0)
    out = apply([client], [tr(B1, 6), tr(B2, 4)]).records
    lis = [listener(ts=ts, host=h, ip=ip, port=8080, service="api", comm="api") for h, ip in (("h2", B1), ("h3", B2))]
    inbound = [connection(ts=ts, host=h, host_ip=ip, service="api", direction="inbound", local_ip=ip,
                          local_port=8080, remote_ip=POD, remote_port=0, connects=0, accepts=n, closes=n)
               for h, ip, n in (("h2", B1, 6), ("h3", B2, 4))]
    _ingest(store, out + inbound, lis)
    edges = resolved(store)
    assert {k: e["connects"] for k, e in edges.items()} == {("web", "api"): 10}
    assert not [k for k in edges if INTERNET in k]
    inst = {(e["s_inst"], e["d_inst"]): e["connects"]
            for e in reads.graph_rows(store, Window.at(T0 + 300, 240), instances_of="api")}
    assert inst == {("web-1", "h2"): 6, ("web-1", "h3"): 4}
    # the virtual address is kept in the raw rows
    rows = store.query(f"SELECT toString(remote_ip), toString(nat_ip), nat_port FROM {store.db}.connections "
                       f"WHERE direction = 'outbound' ORDER BY remote_ip")
    assert rows == [("::ffff:10.200.0.2", "::ffff:10.96.0.10", 80), ("::ffff:10.200.0.3", "::ffff:10.96.0.10", 80)]


def test_the_same_records_without_translation_are_what_the_tracer_drew_before(store):
    """Without NAT the ClusterIP is nobody's listener: web -> INTERNET, and the backends'
    inbound records are dropped as counted from the client side (the bug this fixes)."""
    ts = format_ts(T0 + 120)
    client = rec(ts=ts, host="n1", host_ip="10.200.0.1", service="web", connects=10, closes=10, open=0)
    lis = [listener(ts=ts, host="h2", ip=B1, port=8080, service="api", comm="api")]
    inbound = [connection(ts=ts, host="h2", host_ip=B1, service="api", direction="inbound", local_ip=B1,
                          local_port=8080, remote_ip=POD, remote_port=0, connects=0, accepts=10, closes=10)]
    _ingest(store, apply([client], []).records + inbound, lis)
    assert {k: e["connects"] for k, e in resolved(store).items()} == {("web", INTERNET): 10}


def test_source_nat_to_the_hosts_address_is_not_counted_twice(store):
    """The published port: the container's inbound record names the host's address (masquerade),
    which the translated record carries as its local address."""
    ts = format_ts(T0 + 120)
    client = rec(ts=ts, host="n1", host_ip="192.0.2.1", service="cli", local_ip="127.0.0.1",
                 remote_ip="127.0.0.1", remote_port=18080, connects=3, closes=3, open=0)
    t = Translation("127.0.0.1", "127.0.0.1", 18080, B1, 8080, "10.200.0.1", 3, 3, 0)
    lis = [listener(ts=ts, host="n1", ip=B1, port=8080, service="app", comm="app")]
    inbound = [connection(ts=ts, host="n1", host_ip="192.0.2.1", service="app", direction="inbound",
                          local_ip=B1, local_port=8080, remote_ip="10.200.0.1", remote_port=0, connects=0,
                          accepts=3, closes=3)]
    _ingest(store, apply([client], [t]).records + inbound, lis)
    assert {k: e["connects"] for k, e in resolved(store).items()} == {("cli", "app"): 3}


def test_untraced_client_through_source_nat_is_the_documented_limit(store):
    """An external client of a NodePort masqueraded to the node's address: the backend's
    inbound record names the node, a traced host - the connections are taken as counted
    from the client side and no edge is drawn (tracer/nat.py, caveats)."""
    ts = format_ts(T0 + 120)
    node_heartbeat = connection(ts=ts, host="n1", host_ip="10.200.0.1", service="kubelet", local_ip="10.200.0.1",
                                remote_ip="10.200.0.9", remote_port=6443, connects=1)
    inbound = connection(ts=ts, host="h2", host_ip=B1, service="api", direction="inbound", local_ip=B1,
                         local_port=8080, remote_ip="10.200.0.1", remote_port=0, connects=0, accepts=4, closes=4)
    lis = [listener(ts=ts, host="h2", ip=B1, port=8080, service="api", comm="api")]
    _ingest(store, apply([node_heartbeat], []).records + [inbound], lis)
    edges = resolved(store)
    assert ("kubelet", INTERNET) in edges and not [k for k in edges if k[1] == "api"]
