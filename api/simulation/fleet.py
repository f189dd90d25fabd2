"""A simulated fleet: the pure, deterministic model behind ``phobos simulate``.

``build_fleet(config)`` turns a ``SimConfig`` (sizes, time range, seed) into a
``Fleet``: business areas and processes, services with ports and runtimes
(Kubernetes pods or systemd host services), instances spread over
datacenters, a dependency DAG with a few deliberate cycles, an INTERNET
ingress, external dependencies, untraced clients, and a timeline of events
(deploys that move instances to new IPs and add or remove edges, IP reuse by a
different service, incidents).  Nothing here does I/O or reads the clock; the
same config always gives the same fleet.  ``api/simulation/simulate.py`` turns
a fleet into ConnectionRecords/ListenerRecords.

The time line is cut into *epochs* at every event: inside an epoch the
instance addresses, the active edges and the failing service are constant, so
record generation can work on whole arrays per interval.

Addresses are IPv4 held as ``uint32`` (the cheap form ``Store.insert_arrow``
accepts).  Public addresses come only from documentation ranges (RFC 5737):
INTERNET clients from 198.51.100.0/24 and 203.0.113.128/25, external
dependencies from 203.0.113.0/26.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SimConfig",
    "Epoch",
    "Fleet",
    "build_fleet",
    "ip_text",
    "INTERNET",
]

INTERNET = "INTERNET"

# Pair kinds: who reports the pair.
PAIR_INTERNAL, PAIR_EXTERNAL, PAIR_INTERNET, PAIR_UNTRACED = 0, 1, 2, 3

_AREA_WORDS = (
    "payments", "checkout", "catalog", "search", "identity", "orders", "shipping",
    "inventory", "pricing", "promotions", "reviews", "recommendations", "notifications",
    "messaging", "billing", "ledger", "fraud", "risk", "analytics", "reporting", "media",
    "content", "accounts", "loyalty", "support", "partners", "logistics", "warehouse",
    "returns", "tax", "compliance", "marketing", "ads", "storefront",
)

# role: (port, runtime, rank in the call order, pooled callers, comm, weight of instances)
_ROLES: dict[str, tuple[int, str, int, bool, str, float]] = {
    "web": (8080, "k8s", 0, False, "node", 1.5),
    "api": (8080, "k8s", 1, False, "java", 1.3),
    "grpc": (9090, "k8s", 2, True, "", 1.0),
    "worker": (8081, "k8s", 2, False, "python3", 0.8),
    "search": (9200, "systemd", 3, False, "java", 0.5),
    "db": (5432, "systemd", 4, True, "postgres", 0.3),
    "cache": (6379, "systemd", 4, True, "redis-server", 0.4),
    "queue": (9092, "systemd", 4, True, "java", 0.4),
}
# The first roles of every area, then the rest cycle; every area starts with a
# caller so that no area is storage only.
_ROLE_ORDER = ("api", "db", "cache", "web", "grpc", "worker", "queue", "api", "grpc",
               "search", "worker", "api", "db", "grpc", "cache", "api")

_EXTERNALS = (
    # name, description, cidr, addresses used (last octet in 203.0.113.0/24), port,
    # hostnames, preferred area
    ("card-processor", "Card payments provider", "203.0.113.0/28", (5, 6), 443,
     ("api.card-processor.example",), "payments"),
    ("sms-gateway", "Text messages to customers", "203.0.113.16/28", (20,), 443,
     ("api.sms-gateway.example",), "notifications"),
    ("geo-maps", "Address lookup and maps", "203.0.113.32/28", (40, 41), 443,
     ("maps.geo.example",), "shipping"),
    ("email-relay", "Outbound e-mail", "203.0.113.48/28", (50,), 587,
     ("smtp.email-relay.example",), "notifications"),
)

#: Client addresses of the INTERNET (documentation ranges only).
INTERNET_CLIENTS = np.concatenate([
    int(ipaddress.IPv4Address("198.51.100.1")) + np.arange(254, dtype=np.uint32),
    int(ipaddress.IPv4Address("203.0.113.129")) + np.arange(126, dtype=np.uint32),
]).astype(np.uint32)

ROOT_NETNS = 4026531840  # the init network namespace's inode on Linux


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ip_text(value: int) -> str:
    """Dotted text of an IPv4 address held as an integer."""
    return str(ipaddress.IPv4Address(int(value)))


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.  ``start``/``end`` are epoch seconds snapped to ``interval``.

    Records carry ``ts`` = end of their interval, so the intervals written are
    ``start + interval, start + 2*interval, ..., end``.
    """

    areas: int = 6
    services: int = 40
    instances: int = 200
    dcs: int = 2
    start: int = 0
    end: int = 0
    interval: int = 60
    seed: int = 1

    def check(self) -> "SimConfig":
        """Return a snapped copy or raise ``ValueError`` saying what is wrong."""
        if self.areas < 1:
            raise ValueError(f"--areas must be at least 1, got {self.areas}")
        if self.services < self.areas:
            raise ValueError(f"--services ({self.services}) must be at least --areas ({self.areas}): "
                             "every area owns at least one service")
        if self.instances < self.services:
            raise ValueError(f"--instances ({self.instances}) must be at least --services "
                             f"({self.services}): every service runs at least one instance")
        if self.services > 20000 or self.instances > 200000:
            raise ValueError("at most 20000 services and 200000 instances")
        if not 1 <= self.dcs <= 50:
            raise ValueError(f"--dcs must be from 1 to 50, got {self.dcs}")
        if not 1 <= self.interval <= 86400:
            raise ValueError(f"--interval must be from 1 to 86400 seconds, got {self.interval}")
        if self.seed < 0:
            raise ValueError(f"--seed must not be negative, got {self.seed}")
        start = self.start - self.start % self.interval
        end = self.end - self.end % self.interval
        if end < start:
            raise ValueError("--to is before --from")
        return SimConfig(self.areas, self.services, self.instances, self.dcs, start, end,
                         self.interval, self.seed)

    def digest(self) -> str:
        """Short stable hash of the config; part of every dedup token."""
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Epoch:
    """The fleet's state for intervals with ``start <= ts < end``."""

    start: int
    end: int
    ip: np.ndarray           # per instance slot, uint32
    host_ip: np.ndarray      # uint32
    pid: np.ndarray          # uint32
    netns: np.ndarray        # uint32
    host: list[str]
    pod: list[str]
    container_id: list[str]
    edge_active: np.ndarray  # bool per edge
    failing: int = -1        # service index failing in this epoch, or -1


@dataclass
class Fleet:
    """The model; see the module docstring.  Index-based arrays for speed."""

    config: SimConfig
    dcs: list[str]
    areas: list[str]
    processes: list[tuple[str, list[str]]]
    svc_name: list[str]
    svc_area: np.ndarray
    svc_role: list[str]
    svc_port: np.ndarray
    svc_runtime: list[str]
    svc_comm: list[str]
    svc_namespace: list[str]
    ingress: list[int]
    externals: list[dict[str, Any]]
    edges: np.ndarray                 # (n, 2) client service, server service
    cycles: list[tuple[str, str]]
    inst_service: np.ndarray          # per slot
    inst_dc: np.ndarray
    epochs: list[Epoch]
    events: list[dict[str, Any]]
    # pairs: one per (client, server endpoint) talking every interval
    p_kind: np.ndarray
    p_client: np.ndarray              # slot or -1
    p_server: np.ndarray              # slot or -1
    p_edge: np.ndarray                # edge index or -1
    p_remote_ip: np.ndarray           # fixed server ip (externals) / client ip (untraced)
    p_port: np.ndarray
    p_pooled: np.ndarray
    p_pool: np.ndarray
    p_lam: np.ndarray                 # connects per interval at full load
    p_dur_ms: np.ndarray
    p_req_bytes: np.ndarray
    p_resp_ratio: np.ndarray
    untraced: list[str] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return len(self.inst_service)

    def epoch_at(self, ts: int) -> Epoch:
        """The epoch holding interval end ``ts`` (the last one after the time line)."""
        for epoch in self.epochs:
            if ts < epoch.end:
                return epoch
        return self.epochs[-1]

    def edge_names(self, epoch: Epoch | None = None) -> list[tuple[str, str]]:
        """Service-level edges (client, server), all or those active in ``epoch``."""
        out = []
        for i, (c, s) in enumerate(self.edges):
            if epoch is None or epoch.edge_active[i]:
                out.append((self.svc_name[c], self.svc_name[s]))
        return out

    def catalog_dict(self) -> dict[str, Any]:
        """The matching catalog in the YAML form of ``tracer/catalog.py``."""
        areas = []
        for a in self.areas:
            team = f"team-{a}"
            areas.append({
                "name": a, "title": a.replace("-", " ").title(), "kind": "area", "owner": team,
                "description": f"Business area {a} (simulated).",
                "links": [
                    {"kind": "oncall", "title": "On-call", "url": f"https://oncall.example.com/teams/{team}"},
                    {"kind": "dashboard", "title": "Area dashboard", "url": f"https://grafana.example.com/d/area-{a}"},
                ],
            })
        for name, services in self.processes:
            areas.append({"name": name, "title": name.replace("-", " ").title(), "kind": "process",
                          "description": "Business process (simulated).", "services": list(services)})
        services = []
        for i, name in enumerate(self.svc_name):
            role, port = self.svc_role[i], int(self.svc_port[i])
            if self.svc_runtime[i] == "k8s":
                match: dict[str, Any] = {"k8s_labels": {"app.kubernetes.io/name": name}}
            else:
                match = {"systemd_unit": [f"{name}.service"], "ports": [port]}
            services.append({
                "name": name, "area": self.areas[int(self.svc_area[i])],
                "title": name.replace("-", " ").title(),
                "tier": 1 if role in ("db", "web") else 2 if role in ("api", "grpc", "cache", "queue") else 3,
                "description": f"{role} service on port {port} ({self.svc_runtime[i]}, simulated).",
                "match": match,
                "links": [
                    {"kind": "dashboard", "title": "Grafana", "url": f"https://grafana.example.com/d/svc-{name}"},
                    {"kind": "oncall", "title": "On-call", "url": f"https://oncall.example.com/services/{name}"},
                    {"kind": "deploy", "title": "Deploys", "url": f"https://deploy.example.com/apps/{name}"},
                ],
            })
        externals = []
        for ext in self.externals:
            d = {"name": ext["name"], "description": ext["description"], "cidrs": [ext["cidr"]],
                 "hostnames": list(ext["hostnames"]), "ports": [ext["port"]]}
            if ext["area"]:
                d["area"] = ext["area"]
            externals.append(d)
        return {"version": 1, "areas": areas, "services": services, "externals": externals}

    def catalog_yaml(self) -> str:
        import yaml

        header = (f"# Phobos catalog of a simulated fleet (seed {self.config.seed}, "
                  f"{len(self.areas)} areas, {len(self.svc_name)} services)\n")
        return header + yaml.safe_dump(self.catalog_dict(), sort_keys=False, width=100)


class _Pool:
    """Per-datacenter address pool; freed addresses are handed out first (FIFO).

    Handing out freed addresses first is what real IPAM does under pressure
    and it is the trap the API must get right: yesterday's address of one
    service is today's address of another.
    """

    def __init__(self, base: int):
        self.next = base
        self.free: list[int] = []

    def take(self) -> int:
        if self.free:
            return self.free.pop(0)
        ip, self.next = self.next, self.next + 1
        return ip

    def give(self, ip: int) -> None:
        self.free.append(ip)


def _area_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        word = _AREA_WORDS[i % len(_AREA_WORDS)]
        names.append(word if i < len(_AREA_WORDS) else f"{word}-{i // len(_AREA_WORDS) + 1}")
    return names


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[d] for d in rng.integers(0, 16, n))


def _pod_suffix(rng: np.random.Generator) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[d] for d in rng.integers(0, len(alphabet), 5))


def build_fleet(config: SimConfig) -> Fleet:
    """Build the fleet for ``config`` (checked and snapped first).  Pure.

    Raises
    ------
    ValueError
        When the config is inconsistent (see ``SimConfig.check``).
    """
    cfg = config.check()
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    dcs = [f"dc{i + 1}" for i in range(cfg.dcs)]
    areas = _area_names(cfg.areas)

    # -- services: round-robin over areas so every area has one ----------
    svc_area = np.arange(cfg.services) % cfg.areas
    svc_area.sort(kind="stable")
    svc_name, svc_role = [], []
    seen: dict[str, int] = {}
    for i in range(cfg.services):
        a = int(svc_area[i])
        k = i - int(np.searchsorted(svc_area, a))
        role = _ROLE_ORDER[k % len(_ROLE_ORDER)]
        base = f"{areas[a]}-{role}"
        seen[base] = seen.get(base, 0) + 1
        svc_name.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
        svc_role.append(role)
    svc_port = np.array([_ROLES[r][0] for r in svc_role], dtype=np.uint16)
    svc_runtime = [_ROLES[r][1] for r in svc_role]
    svc_rank = np.array([_ROLES[r][2] for r in svc_role])
    svc_comm = [(_ROLES[r][4] or n[:15]) for r, n in zip(svc_role, svc_name)]
    svc_namespace = [areas[int(a)] if rt == "k8s" else "" for a, rt in zip(svc_area, svc_runtime)]
    callers = np.array([r not in ("db", "cache", "queue") for r in svc_role])

    # -- dependency DAG: edges only go to a later position in (rank, u) ----
    order_key = svc_rank + rng.random(cfg.services) * 0.9
    edge_set: dict[tuple[int, int], None] = {}
    by_area = [np.flatnonzero(svc_area == a) for a in range(cfg.areas)]
    for s in range(cfg.services):
        if not callers[s]:
            continue
        later_same = [t for t in by_area[svc_area[s]] if order_key[t] > order_key[s]]
        n_deps = int(rng.integers(1, 3))
        if later_same:
            for t in rng.choice(later_same, size=min(n_deps, len(later_same)), replace=False):
                edge_set[(s, int(t))] = None
        if cfg.areas > 1 and rng.random() < 0.35 and svc_role[s] != "search":
            cands = np.flatnonzero((svc_area != svc_area[s]) & (order_key > order_key[s])
                                   & np.isin(svc_role, ["api", "grpc", "search"]))
            if len(cands):
                for t in rng.choice(cands, size=1):
                    edge_set[(s, int(t))] = None
    # A few deliberate cycles: a callee calling back its caller.
    cycles = []
    back_cands = [(c, s) for (c, s) in edge_set if callers[s] and (s, c) not in edge_set]
    for j in rng.permutation(len(back_cands))[: max(1, min(3, cfg.services // 20))] if back_cands else []:
        c, s = back_cands[int(j)]
        edge_set[(s, c)] = None
        cycles.append((svc_name[s], svc_name[c]))

    # -- instances ---------------------------------------------------------
    weights = np.array([_ROLES[r][5] for r in svc_role]) * rng.lognormal(0, 0.7, cfg.services)
    counts = np.ones(cfg.services, dtype=np.int64)
    counts += rng.multinomial(cfg.instances - cfg.services, weights / weights.sum())
    inst_service = np.repeat(np.arange(cfg.services), counts)
    n_inst = len(inst_service)
    ordinal = np.arange(n_inst) - np.repeat(np.cumsum(counts) - counts, counts)
    offset = rng.integers(0, cfg.dcs, cfg.services)
    inst_dc = ((ordinal + offset[inst_service]) % cfg.dcs).astype(np.int64)

    # addresses: k8s nodes 10.<dc>.0.x, host services 10.<dc>.32.x, pods 10.<100+dc>.x.x
    is_k8s = np.array([svc_runtime[s] == "k8s" for s in inst_service])
    pod_pools = [_Pool(_ip(f"10.{101 + d}.0.10")) for d in range(cfg.dcs)]
    host_pools = [_Pool(_ip(f"10.{1 + d}.32.10")) for d in range(cfg.dcs)]
    ip = np.zeros(n_inst, dtype=np.uint32)
    host_ip = np.zeros(n_inst, dtype=np.uint32)
    host: list[str] = [""] * n_inst
    pod: list[str] = [""] * n_inst
    container: list[str] = [""] * n_inst
    pid = rng.integers(300, 4_000_000, n_inst).astype(np.uint32)
    netns = np.full(n_inst, ROOT_NETNS, dtype=np.uint32)
    # k8s nodes: about 25 pods per node
    node_of = np.zeros(n_inst, dtype=np.int64)
    nodes_per_dc = []
    for d in range(cfg.dcs):
        slots = np.flatnonzero(is_k8s & (inst_dc == d))
        n_nodes = max(1, (len(slots) + 24) // 25)
        nodes_per_dc.append(n_nodes)
        node_of[slots] = rng.integers(0, n_nodes, len(slots))
    node_ip = [[_ip(f"10.{1 + d}.0.10") + n for n in range(nodes_per_dc[d])] for d in range(cfg.dcs)]
    rs_hash = {s: _hex(rng, 10) for s in range(cfg.services)}
    next_netns = [ROOT_NETNS + 1000]

    def place(slot: int) -> None:
        s, d = int(inst_service[slot]), int(inst_dc[slot])
        if is_k8s[slot]:
            ip[slot] = pod_pools[d].take()
            host_ip[slot] = node_ip[d][node_of[slot]]
            host[slot] = f"k8s-{dcs[d]}-node-{node_of[slot] + 1:03d}"
            pod[slot] = f"{svc_name[s]}-{rs_hash[s]}-{_pod_suffix(rng)}"
            container[slot] = _hex(rng, 64)
            netns[slot] = next_netns[0]
            next_netns[0] += 1
        else:
            ip[slot] = host_pools[d].take()
            host_ip[slot] = ip[slot]
            host[slot] = f"{svc_name[s]}-{ordinal[slot] + 1:02d}.{dcs[d]}"
            pod[slot] = ""
            container[slot] = ""
        pid[slot] = int(rng.integers(300, 4_000_000))

    for slot in range(n_inst):
        place(slot)

    # -- INTERNET ingress, externals, untraced clients, processes ----------
    ingress = [s for s in range(cfg.services) if svc_role[s] == "web" and svc_area[s] % 3 == 0]
    if not ingress:
        ingress = [s for s in range(cfg.services) if svc_role[s] in ("web", "api")][:1]
    externals = []
    for k, (name, desc, cidr, hosts_, port, hostnames, pref) in enumerate(_EXTERNALS):
        area = pref if pref in areas else ""
        cands = [s for s in range(cfg.services) if callers[s] and (not area or areas[svc_area[s]] == area)]
        if not cands:
            cands = [s for s in range(cfg.services) if callers[s]]
        n_callers = min(len(cands), 1 + int(rng.integers(0, 3)))
        users = sorted(int(c) for c in rng.choice(cands, size=n_callers, replace=False))
        externals.append({"name": name, "description": desc, "cidr": cidr,
                          "ips": [_ip(f"203.0.113.{h}") for h in hosts_], "port": port,
                          "hostnames": hostnames, "area": area, "callers": users})
    untraced_targets = [s for s in range(cfg.services) if svc_role[s] in ("api", "db")][:3]
    untraced_ips = [_ip(f"10.250.0.{10 + i}") for i in range(len(untraced_targets))]

    # -- events on the time line ------------------------------------------
    n_int = (cfg.end - cfg.start) // cfg.interval
    events: list[dict[str, Any]] = []
    edges = list(edge_set)
    edge_active_initial = np.ones(len(edges) + 2, dtype=bool)  # room for one added edge

    def at(frac: float) -> int:
        return cfg.start + cfg.interval * max(1, int(round(n_int * frac)))

    plan: list[tuple[int, str, Any]] = []
    multi = [s for s in range(cfg.services) if svc_runtime[s] == "k8s" and counts[s] >= cfg.dcs]
    if n_int >= 12 and len(multi) >= 3:
        by_port = sorted(multi, key=lambda s: (-int(svc_port[s] == 8080), -int(counts[s]), s))
        movers = [int(s) for s in rng.permutation(by_port[: max(3, len(by_port) // 3)])]
        a_svc = movers[0]
        b_svc = next((s for s in movers[1:] if svc_port[s] == svc_port[a_svc]), movers[1])
        c_svc = next(s for s in movers[1:] if s != b_svc)
        # an edge added by b's deploy: to a later service it does not call yet
        deps = {t for (c, t) in edges if c == b_svc}
        new_targets = [t for t in range(cfg.services)
                       if t != b_svc and t not in deps and order_key[t] > order_key[b_svc]]
        added = None
        if new_targets:
            added = (b_svc, int(new_targets[int(rng.integers(0, len(new_targets)))]))
            edges.append(added)
            edge_active_initial[len(edges) - 1] = False
        c_deps = [i for i, (c, t) in enumerate(edges) if c == c_svc and edge_active_initial[i]]
        removed = c_deps[int(rng.integers(0, len(c_deps)))] if c_deps else None
        called = {t for (_, t) in edges}
        fail_cands = [s for s in sorted(called) if s not in (a_svc, b_svc, c_svc)]
        if len(fail_cands) < 2:
            fail_cands = sorted({t for (_, t) in edges}) or [0]
        f1, f2 = (int(x) for x in rng.choice(fail_cands, size=2, replace=len(fail_cands) < 2))
        plan = [
            (at(0.20), "deploy", (a_svc, None, None)),
            (at(0.30), "incident", (f1, at(0.38))),
            (at(0.50), "deploy", (b_svc, added, None)),
            (at(0.65), "deploy", (c_svc, None, removed)),
            (at(0.75), "incident", (f2, at(0.83))),
        ]
    edge_arr = np.array(edges, dtype=np.int64).reshape(-1, 2)

    # Walk the plan, snapshotting the state at every boundary.
    boundaries = sorted({cfg.start, cfg.end} | {p[0] for p in plan}
                        | {p[2][1] for p in plan if p[1] == "incident"})
    edge_active = edge_active_initial[: len(edges)].copy()
    freed_by: dict[int, tuple[int, str, int]] = {}  # ip -> (service, pod, last ts)
    epochs: list[Epoch] = []
    failing = -1
    incident_end = {p[2][1]: p[2][0] for p in plan if p[1] == "incident"}
    for b_i, t in enumerate(boundaries[:-1] if len(boundaries) > 1 else boundaries):
        if t in incident_end:
            failing = -1
        for when, kind, arg in plan:
            if when != t:
                continue
            if kind == "incident":
                failing = arg[0]
                events.append({"kind": "incident", "ts": when, "end": arg[1], "service": svc_name[arg[0]],
                               "area": areas[int(svc_area[arg[0]])],
                               "effect": "failed connects at its clients, open connections drop"})
            else:
                s, add, rem = arg
                slots = np.flatnonzero(inst_service == s)
                old = [(int(ip[x]), pod[x]) for x in slots]
                for x in slots:
                    place(int(x))
                moved = []
                for x, (old_ip, old_pod) in zip(slots, old):
                    pod_pools[int(inst_dc[x])].give(old_ip)
                    moved.append({"pod_old": old_pod, "pod_new": pod[x], "ip_old": ip_text(old_ip),
                                  "ip_new": ip_text(ip[x]), "dc": dcs[int(inst_dc[x])]})
                event = {"kind": "deploy", "ts": when, "service": svc_name[s], "moved": moved}
                events.append(event)
                for x, m in zip(slots, moved):
                    new_ip = int(ip[x])
                    if new_ip in freed_by and freed_by[new_ip][0] != s:
                        prev_s, prev_pod, _ = freed_by[new_ip]
                        events.append({"kind": "ip_reuse", "ts": when, "ip": ip_text(new_ip),
                                       "port": int(svc_port[s]), "old_port": int(svc_port[prev_s]),
                                       "old_service": svc_name[prev_s],
                                       "old_pod": prev_pod, "old_last_ts": freed_by[new_ip][2],
                                       "new_service": svc_name[s], "new_pod": pod[x]})
                    freed_by.pop(new_ip, None)
                for old_ip, old_pod in old:
                    freed_by[old_ip] = (s, old_pod, when - cfg.interval)
                if add is not None:
                    i = edges.index(add)
                    edge_active[i] = True
                    events.append({"kind": "edge_added", "ts": when, "client": svc_name[add[0]],
                                   "server": svc_name[add[1]], "by_deploy_of": svc_name[s]})
                if rem is not None:
                    edge_active[rem] = False
                    c, t2 = edges[rem]
                    events.append({"kind": "edge_removed", "ts": when, "client": svc_name[c],
                                   "server": svc_name[t2], "by_deploy_of": svc_name[s]})
        end = boundaries[b_i + 1] if b_i + 1 < len(boundaries) else cfg.end
        epochs.append(Epoch(start=t, end=end, ip=ip.copy(), host_ip=host_ip.copy(), pid=pid.copy(),
                            netns=netns.copy(), host=list(host), pod=list(pod),
                            container_id=list(container), edge_active=edge_active.copy(),
                            failing=failing))
    # The first epoch also covers anything before start; the last one, live time after end.
    epochs[0].start = -(2**62)
    epochs[-1].end = 2**62
    events.sort(key=lambda e: (e["ts"], e["kind"]))

    # -- pairs ---------------------------------------------------------------
    inst_of = [np.flatnonzero(inst_service == s) for s in range(cfg.services)]
    cols: dict[str, list] = {k: [] for k in ("kind", "client", "server", "edge", "rip", "port",
                                              "pooled", "pool", "lam")}

    def add_pairs(kind, client, server, edge, rip, port, pooled, pool, lam):
        cols["kind"].append(np.full(len(client), kind))
        cols["client"].append(np.asarray(client, dtype=np.int64))
        cols["server"].append(np.asarray(server, dtype=np.int64))
        cols["edge"].append(np.full(len(client), edge))
        cols["rip"].append(np.asarray(rip, dtype=np.uint32))
        cols["port"].append(np.full(len(client), port))
        cols["pooled"].append(np.full(len(client), pooled))
        cols["pool"].append(np.asarray(pool, dtype=np.int64))
        cols["lam"].append(np.asarray(lam, dtype=np.float64))

    for e, (c, s) in enumerate(edges):
        clients, servers = inst_of[c], inst_of[s]
        # each client instance talks to 1-3 instances of the dependency
        k = np.minimum(rng.choice([1, 1, 1, 1, 1, 1, 2, 3], size=len(clients)), len(servers))
        if svc_role[s] in ("db", "queue", "grpc"):
            # one pool per client: to the primary (db), the partition leader
            # (queue) or the backend a long-lived HTTP/2 channel settled on (grpc)
            k[:] = 1
        cl = np.repeat(clients, k)
        sv = np.concatenate([rng.choice(servers, size=kk, replace=False) for kk in k])
        pooled = bool(_ROLES[svc_role[s]][3])
        n = len(cl)
        pool = rng.integers(2, 17, n) if pooled else np.zeros(n, dtype=np.int64)
        lam = (pool * 0.03 * cfg.interval / 60.0) if pooled else rng.lognormal(0.8, 1.1, n) * cfg.interval / 60.0
        add_pairs(PAIR_INTERNAL, cl, sv, e, np.zeros(n), int(svc_port[s]), pooled, pool, lam)
    for x, ext in enumerate(externals):
        for c in ext["callers"]:
            cl = inst_of[c]
            rip = rng.choice(ext["ips"], size=len(cl))
            add_pairs(PAIR_EXTERNAL, cl, np.full(len(cl), -1), -1, rip, ext["port"], False,
                      np.zeros(len(cl)), rng.lognormal(0.7, 0.8, len(cl)) * cfg.interval / 60.0)
    for s in ingress:
        sv = np.repeat(inst_of[s], 3)  # three distinct client addresses per instance and interval
        add_pairs(PAIR_INTERNET, np.full(len(sv), -1), sv, -1, np.zeros(len(sv)), int(svc_port[s]),
                  False, np.zeros(len(sv)), rng.lognormal(1.5, 0.8, len(sv)) * cfg.interval / 60.0)
    for s, uip in zip(untraced_targets, untraced_ips):
        sv = inst_of[s]
        add_pairs(PAIR_UNTRACED, np.full(len(sv), -1), sv, -1, np.full(len(sv), uip), int(svc_port[s]),
                  svc_role[s] == "db", np.full(len(sv), 2 if svc_role[s] == "db" else 0),
                  rng.lognormal(1.0, 0.5, len(sv)) * cfg.interval / 60.0)
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    n_pairs = len(cat["kind"])
    pooled = cat["pooled"].astype(bool)
    dur_ms = np.where(pooled, rng.lognormal(np.log(1_800_000), 0.5, n_pairs),
                      rng.lognormal(np.log(120), 0.8, n_pairs))

    # business processes: an ingress service and what it reaches
    processes = []
    adj: dict[int, list[int]] = {}
    for c, s in edges:
        adj.setdefault(c, []).append(s)
    starts = ingress[:3] if ingress else [0]
    for name, s0 in zip(("checkout-flow", "signup-flow", "order-fulfilment"), starts):
        seen_s, queue = [s0], [s0]
        while queue and len(seen_s) < 8:
            for t in adj.get(queue.pop(0), []):
                if t not in seen_s:
                    seen_s.append(t)
                    queue.append(t)
        processes.append((name, [svc_name[t] for t in seen_s]))

    return Fleet(
        config=cfg, dcs=dcs, areas=areas, processes=processes, svc_name=svc_name,
        svc_area=svc_area, svc_role=svc_role, svc_port=svc_port, svc_runtime=svc_runtime,
        svc_comm=svc_comm, svc_namespace=svc_namespace, ingress=ingress, externals=externals,
        edges=edge_arr, cycles=cycles, inst_service=inst_service, inst_dc=inst_dc, epochs=epochs,
        events=events, p_kind=cat["kind"].astype(np.int8), p_client=cat["client"],
        p_server=cat["server"], p_edge=cat["edge"].astype(np.int64), p_remote_ip=cat["rip"],
        p_port=cat["port"].astype(np.uint16), p_pooled=pooled, p_pool=cat["pool"],
        p_lam=cat["lam"], p_dur_ms=dur_ms,
        p_req_bytes=rng.lognormal(np.log(800), 0.6, n_pairs),
        p_resp_ratio=rng.lognormal(np.log(6), 0.8, n_pairs),
        untraced=[ip_text(u) for u in untraced_ips],
    )
