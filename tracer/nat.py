"""Connection records through destination NAT: the backend a virtual address led to.

What it does: a socket keeps the address it connected to, so a client of a
Kubernetes Service (ClusterIP, NodePort) or of a published container port
reports the *virtual* ip:port, which no process listens on.  The host that
translates - kube-proxy and container runtimes NAT in the host network
namespace of the client's node - has the translation in its conntrack table
(``tracer/conntrack.py``).  :func:`apply` takes one interval's connection
records (``tracer.aggregate.build_records``) and the same interval's
:class:`~tracer.conntrack.Translation` objects and replaces each *outbound*
record whose (local_ip, remote_ip, remote_port) is a destination-NAT
translation's (client_ip, virtual_ip, virtual_port) by one record per
backend: ``remote_ip``/``remote_port`` the backend, ``nat_ip``/``nat_port``
the virtual address.  Every other record passes unchanged, with ``nat_ip``
``::`` and ``nat_port`` 0.  Resolution then finds the backend's listener as
for any direct connection.

How the counts are split: the kernel counts per (process, virtual address),
conntrack per backend, so a record's counters are shared out over its
backends in proportion to their conntrack counts - connects, failures,
closes (and accepts, always 0 outbound) by the connections each backend got
in the interval (``new``; all of them, ``connections``, when none is new),
``open`` by the connections established at the drain (``open``; else
``connections``), ``duration_ms_sum`` and the byte counts by
``connections``.  The split is by largest remainder, so the pieces of every
counter add up to the record's exactly.  Pieces whose counters are all zero
are left out (one piece is always kept).

Source NAT on the same path (the published port on 127.0.0.1, which must be
masqueraded to leave the host; a hairpin; a host-network client masqueraded
toward a Service): the backend sees ``source_ip``, not the client's own
address, and the backend's inbound record carries it.  Resolution counts an
inbound record only when its peer address is no traced client's local
address in that minute, so the translated record's ``local_ip`` is the
``source_ip`` the backend sees - otherwise the same connections would be
drawn twice, once from each end.

Cost: pure Python, one dict lookup per record and a few integer operations
per backend of a translated record; no I/O.

Caveats:

* The translation must happen on the client's host, the host whose tracer
  has the client's record.  A NodePort or a load balancer reached from
  another host is translated on the node that receives the traffic: the
  client's record keeps the node's ip:port (``INTERNET`` unless a catalog
  range names it) - the catalog's virtual addresses are for that case.
* Untraced clients through source NAT (an external client of a NodePort
  with ``externalTrafficPolicy: Cluster``): the backend's inbound record
  names the node's address.  When that address is a traced host's (the
  node's ``host_ip``), resolution takes the connections for ones already
  counted from the client side and the edge does not appear; otherwise it
  is drawn from the node's address (``INTERNET`` or the catalog range that
  holds it) to the backend.  The node's translation is not used for it.
* Several processes of one client address to one virtual address (two
  processes in a pod, host-network processes) share one set of conntrack
  counts: each record is split in the same proportions, exact in its sums,
  but which process reached which backend is not known.
* Translations in a pod's own network namespace need a reader there
  (``--nat-netns``); IPVS, whose entries carry no NAT status bits, is seen
  by the conntrack dump only (see ``tracer/conntrack.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from tracer.records import normalize_ip

__all__ = ["NO_NAT_IP", "NO_NAT_PORT", "NatResult", "apply", "split"]

NO_NAT_IP = "::"
NO_NAT_PORT = 0

#: Record counter -> the backend weight it is split by (first choice, fallback).
_BY_NEW = ("new", "connections")
_BY_OPEN = ("open", "connections")
_BY_CONNECTIONS = ("connections", "connections")
SPLIT_BY: dict[str, tuple[str, str]] = {
    "connects": _BY_NEW, "accepts": _BY_NEW, "closes": _BY_NEW, "failures": _BY_NEW,
    "open": _BY_OPEN,
    "duration_ms_sum": _BY_CONNECTIONS, "bytes_sent": _BY_CONNECTIONS, "bytes_received": _BY_CONNECTIONS,
    # health of the edge (optional fields: split when the record has them)
    "handshakes": _BY_NEW, "handshake_us_sum": _BY_NEW, "retransmits": _BY_CONNECTIONS, "aborts": _BY_CONNECTIONS,
}
#: Histogram fields: each bucket is split like a counter.
SPLIT_LISTS: dict[str, tuple[str, str]] = {"handshake_hist": _BY_NEW}


@dataclass(frozen=True)
class NatResult:
    """The records after translation, and how many were translated."""

    records: list[dict[str, Any]]
    translated: int     # outbound records that reached a virtual address
    backends: int       # records written for them (one per backend with something to count)
    translations: int   # destination-NAT translations of the interval


@dataclass
class _Backend:
    ip: str
    port: int
    local_ip: str       # the client's address as the backend sees it
    connections: int = 0
    new: int = 0
    open: int = 0


def split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` shared out in proportion to ``weights``, by largest remainder.

    The parts add up to ``total`` exactly; ties go to the larger weight, then
    to the earlier one.  All weights zero: everything goes to the first.

    Examples
    --------
    >>> split(10, [1, 1, 1])
    [4, 3, 3]
    >>> split(5, [0, 3])
    [0, 5]
    """
    whole = sum(weights)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    parts, rests = [], []
    for i, w in enumerate(weights):
        q, r = divmod(total * w, whole)
        parts.append(q)
        rests.append((-r, -w, i))
    for _, _, i in sorted(rests)[:total - sum(parts)]:
        parts[i] += 1
    return parts


def _index(translations: Iterable[Any]) -> dict[tuple[str, str, int], list[_Backend]]:
    """(client ip, virtual ip, virtual port) -> its backends, addresses as records hold them."""
    norm: dict[str, str] = {}

    def ip(text: str) -> str:
        out = norm.get(text)
        if out is None:
            out = norm[text] = normalize_ip(text)
        return out

    out: dict[tuple[str, str, int], dict[tuple[str, int, str], _Backend]] = {}
    for t in translations:
        if not t.dnat:
            continue
        key = (ip(t.client_ip), ip(t.virtual_ip), t.virtual_port)
        seen_as = ip(t.source_ip)
        b_key = (ip(t.backend_ip), t.backend_port, seen_as)
        backend = out.setdefault(key, {}).get(b_key)
        if backend is None:
            backend = out[key][b_key] = _Backend(b_key[0], t.backend_port, seen_as)
        backend.connections += t.connections
        backend.new += t.new
        backend.open += t.open
    return {k: sorted(v.values(), key=lambda b: (b.ip, b.port, b.local_ip)) for k, v in out.items()}


def _weights(backends: list[_Backend], first: str, fallback: str) -> list[int]:
    weights = [getattr(b, first) for b in backends]
    return weights if any(weights) else [getattr(b, fallback) for b in backends]


def _translate(record: Mapping[str, Any], backends: list[_Backend]) -> list[dict[str, Any]]:
    shares = {name: split(int(record[name]), _weights(backends, *by))
              for name, by in SPLIT_BY.items() if name in record}
    lists = {name: [split(int(v), _weights(backends, *by)) for v in record[name]]
             for name, by in SPLIT_LISTS.items() if record.get(name)}
    out = []
    for i, b in enumerate(backends):
        piece = dict(record)
        for name, parts in shares.items():
            piece[name] = parts[i]
        for name, buckets in lists.items():
            piece[name] = [parts[i] for parts in buckets]
        piece["local_ip"] = b.local_ip
        piece["remote_ip"] = b.ip
        piece["remote_port"] = b.port
        piece["nat_ip"] = record["remote_ip"]
        piece["nat_port"] = record["remote_port"]
        if any(piece.get(name) for name in SPLIT_BY):
            out.append(piece)
    if not out:
        # Nothing to share (a record reporting its last, empty state): kept whole.
        first = backends[0]
        out.append(dict(record, local_ip=first.local_ip, remote_ip=first.ip, remote_port=first.port,
                        nat_ip=record["remote_ip"], nat_port=record["remote_port"]))
    return out


def apply(records: Iterable[Mapping[str, Any]], translations: Iterable[Any]) -> NatResult:
    """One interval's connection records with destination NAT followed to the backends.

    Parameters
    ----------
    records : connection records as ``tracer.aggregate.build_records`` makes
        them (addresses already normalised, IPv4 as ``::ffff:a.b.c.d``).
    translations : the interval's ``tracer.conntrack.Translation`` objects
        (or anything with their attributes); plain IPv4/IPv6 text.

    Returns
    -------
    NatResult
        New record dicts (the input is not changed), each with ``nat_ip``
        and ``nat_port``.
    """
    index = _index(translations)
    out: list[dict[str, Any]] = []
    translated = backends = 0
    for rec in records:
        hit = None
        if rec.get("direction") == "outbound" and index:
            hit = index.get((rec["local_ip"], rec["remote_ip"], rec["remote_port"]))
        if hit is None:
            out.append(dict(rec, nat_ip=NO_NAT_IP, nat_port=NO_NAT_PORT))
            continue
        pieces = _translate(rec, hit)
        translated += 1
        backends += len(pieces)
        out.extend(pieces)
    return NatResult(out, translated, backends, sum(len(v) for v in index.values()))
