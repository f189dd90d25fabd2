r"""The service catalog: what the business calls the things Phobos sees.

The tracer sees processes and sockets; people think in business areas,
services and the outside parties they talk to.  The catalog is one YAML file,
kept in version control by the platform team, that maps one onto the other.
This module reads and validates it into frozen dataclasses and answers "which
service is this process" (``Catalog.match_service``), "which outside party
is this address" (``Catalog.match_external``) and "which service does this
virtual address stand for" (``Catalog.match_virtual``).  It is pure: no I/O besides
reading the file it is given.

Who uses it: the tracer (``phobos trace --catalog FILE``) names the processes
it sees with the rules; ``phobos catalog check|load`` validates a file, and
``api/catalog/versions.py`` stores each loaded version as rows of the
``catalog_*`` ClickHouse tables and reads them back.  It lives on the tracer
side because both need it and imports run one way, from ``api`` to ``tracer``.

Cost: loading compiles every regex once (RE2, see below); a match walks the
services in file order and stops at the first hit, so it costs at most one
search per rule, each linear in the text searched.  The tracer asks for every
record it builds (per edge and interval).  Needs PyYAML and ``google-re2``,
imported with this module.

File format (version 1)
-----------------------
::

    version: 1                      # required; the format version

    areas:                          # business areas and business processes
      - name: payments              # required, unique, [a-z0-9][a-z0-9._-]*
        title: Payments             # default: the name
        kind: area                  # area (default) | process
        owner: team-payments
        description: Money in, money out.
        links: [{kind: dashboard, title: Grafana, url: "https://..."}]
      - name: checkout-flow
        kind: process               # a business process spanning services
        services: [web, checkout-api, ledger]   # required for, and only for,
                                                # kind: process
    services:
      - name: ledger                # required, unique (also among externals)
        area: payments              # required; an area of kind: area
        title: Ledger               # default: the name
        owner: team-payments        # default: the area's owner
        tier: 1                     # 1 (most critical) .. 5; omitted = unknown
        description: Double-entry book of every payment.
        match: {...}                # see below
        virtual:                    # addresses that stand for it; see below
          - cidrs: ["198.51.100.10"]  # required: a load balancer's VIP ...
            ports: [443]              # optional; restricts these cidrs only
            sources: ["198.51.100.128/25"]  # optional: the addresses it shows
                                            # the service as the client
        links: [...]
    externals:                      # endpoints outside the traced fleet
      - name: stripe                # required, unique (also among services)
        area: payments              # optional area to draw it in
        description: Card payments.
        cidrs: ["203.0.113.0/24"]   # at least one of cidrs / hostnames
        hostnames: ["api.stripe.com", "*.stripe.com"]
        ports: [443]                # optional; restricts the ranges above

Links are ``{kind, title, url}`` with ``kind`` one of ``LINK_KINDS``
(dashboard, oncall, deploy, runbook, repo, docs, logs, chat), ``title``
defaulting to the kind and an absolute http(s) ``url``.

Matching a process to a service
-------------------------------
A service's ``match`` holds two groups of rules.  *Identity* rules say what
the process is; a process satisfies the group when **any** of them matches:

``comm``          exact task names (the kernel's 15-character ``comm``)
``exe``           regular expressions searched in the executable path
``cmdline``       regular expressions searched in the space-joined cmdline
                  (both in RE2 syntax, see below)
``systemd_unit``  unit names, shell-style globs allowed (``worker@*.service``)
``k8s_labels``    a label selector: every listed label must be present with
                  exactly that value

*Location* rules say where it runs; **each** given one must match:

``hosts``         host names, shell-style globs allowed (``db-*.dc1``)
``cidrs``         IP ranges the process's address must fall in
``ports``         ports the process listens on

So ``{cmdline: [postgres], ports: [5432]}`` is "a postgres listening on
5432" and ``{cidrs: [10.1.2.0/24]}`` alone is "whatever runs on those hosts".
A service without rules matches nothing (the tracer's defaults name it).
Services are tried in file order and the first match wins, so list specific
services before catch-alls.  ``cidrs`` and ``ports`` also let the backend
resolve a remote address to the service when no listener record covers it;
they say where its processes run, and ``ports`` applies to all of its
``cidrs``.  Addresses that only stand for it belong in ``virtual``.

Virtual addresses
-----------------
Where a connection is translated out of the tracers' sight - a cloud load
balancer's VIP, a NodePort reached from a host outside the cluster, another
box's NAT - a traced client's record keeps the address it connected to, and
no listener owns it.  A service's ``virtual`` entries name such addresses:

``cidrs``    required; ranges (or single addresses) that stand for the service
``ports``    optional; these cidrs stand for it on these ports only (other
             ports fall through to the services' ranges, externals and
             INTERNET)
``sources``  optional; the addresses the translation presents to the
             service's instances as the client (a load balancer's source NAT
             pool, the nodes' addresses)

A server address no listener explains resolves first to the virtual entry
that holds it (and its port), then to services' ``match`` ranges, then to
externals, else INTERNET; a listener always wins.  Virtual ranges name
servers only: a client address in one is looked up as any other client's.
Two services' entries may share an address only on disjoint ports (one load
balancer in front of several services); otherwise each overlap is an error.

``sources`` trades completeness for exactness.  The service's instances
record the translated connections too, as inbound connections from a source
address; with ``sources`` set those records are taken for the ones the
traced clients already reported through the VIP and are not counted again -
but untraced clients coming through the same translation are then not drawn
at all (the translation hides who they are).  Without ``sources`` they are
drawn as INTERNET -> service next to the traced clients' edges, which
counts the traced clients' connections twice.  The drop applies to every
inbound record of the service from a source address, whatever entry or port.

Regular expressions (RE2)
-------------------------
``exe`` and ``cmdline`` patterns are *searched* (found anywhere unless
anchored with ``^``/``$``) with RE2 (``google-re2``), whose matching time is
linear in the text for every pattern: any local user chooses their own
command line, and a backtracking engine (Python's ``re``) lets a pattern such
as ``(a+)+$`` take seconds on 30 characters.  So the syntax is RE2's
(https://github.com/google/re2/wiki/Syntax), and the check refuses, with the
pattern's position, what RE2 does not have: backreferences (``\1``,
``(?P=name)``), lookahead/lookbehind (``(?=``, ``(?!``, ``(?<=``, ``(?<!``),
atomic groups and possessive quantifiers, ``(?x)``/``(?a)`` flags (RE2 has
``i``, ``m``, ``s``, ``U``), ``\Z`` (write ``\z``), counted repetition above
``{1000}``, and patterns that compile to more than ``_REGEX_MAX_PROGRAM``
(10,000) instructions.  A pattern both engines accept nearly always means the
same; the differences: ``\d``, ``\w``, ``\s`` and ``\b`` are ASCII-only (use
``\pL``, ``\pN`` for Unicode letters and digits), ``$`` matches only at the
very end (Python's also before a final newline; the tracer's command lines
never end in one), ``x{,3}`` is literal text (write ``x{0,3}``) and POSIX
classes such as ``[[:alpha:]]`` work (Python reads them as a plain set).

Every error names the file, line and column and says how to fix it; all
errors are collected (up to ``MAX_ERRORS``) and nothing is returned unless
the whole file is valid.  A document nested more than ``_MAX_DEPTH`` (64)
levels deep, or expanding to more than ``_MAX_NODES`` nodes through aliases,
is refused where the limit is hit instead of exhausting the stack or memory.
Order carries no meaning for areas and externals, so they are kept sorted by
name; services keep file order.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import ipaddress
import json
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import re2
import yaml

__all__ = [
    "FORMAT_VERSION",
    "LINK_KINDS",
    "AREA_KINDS",
    "MAX_ERRORS",
    "CatalogError",
    "Link",
    "Area",
    "Match",
    "Service",
    "Virtual",
    "External",
    "Catalog",
    "parse_catalog",
    "load_catalog",
]

FORMAT_VERSION = 1
LINK_KINDS = ("dashboard", "oncall", "deploy", "runbook", "repo", "docs", "logs", "chat")
AREA_KINDS = ("area", "process")
MAX_ERRORS = 50
TIERS = range(1, 6)

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
_HOSTNAME_RE = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)
# The kernel keeps task names in a 16-byte buffer (TASK_COMM_LEN), so a longer
# comm rule could never match.
_COMM_MAX = 15
# Aliases can make a small file expand exponentially; refuse rather than hang.
_MAX_NODES = 200_000
# A catalog is at most 6 levels deep (services > service > match > k8s_labels
# > value); PyYAML composes nodes recursively, so thousands of levels would
# exhaust Python's stack.  Deeper documents are refused at this depth.
_MAX_DEPTH = 64

# Catalog regexes are searched in text any local user chooses (a command line
# is whatever the process says it is), so they run on RE2: time linear in the
# text for every pattern, never backtracking.  Errors are ours to report (with
# file:line:col), not RE2's to log; only "does it match" is ever asked.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True
# Linear in the text still scales with the pattern's compiled size.  RE2 caps
# counted repetition at {1000} and memory per pattern at 8 MiB; this cap keeps
# one rule under about 40 ms on the 4 KiB of command line the tracer reads
# (measured with .{1000}, 8004 instructions; typical rules take under 0.01 ms).
_REGEX_MAX_PROGRAM = 10_000
_RE2_SYNTAX = "https://github.com/google/re2/wiki/Syntax"
# Lone surrogates (how os.readlink() carries undecodable bytes) cannot be
# encoded to UTF-8 for RE2; each becomes U+FFFD, one character as before.
_SURROGATE = re.compile("[\ud800-\udfff]")



class CatalogError(Exception):
    """The catalog file is not valid; nothing from it was loaded.

    Attributes
    ----------
    errors : list of str
        One message per problem, each ``"file:line:col: message"``, in file
        order, at most ``MAX_ERRORS`` plus a final "more errors" note.
    """

    def __init__(self, errors: Iterable[str]):
        self.errors = list(errors)
        n = len(self.errors)
        head = f"invalid catalog ({n} error{'s' if n != 1 else ''}):"
        super().__init__("\n".join([head, *self.errors]))


@dataclass(frozen=True)
class Link:
    """A link shown next to an area or service (dashboard, on-call, ...)."""

    kind: str
    title: str
    url: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "title": self.title, "url": self.url}


@dataclass(frozen=True)
class Area:
    """A business area (``kind="area"``) or business process (``"process"``).

    ``services`` is non-empty only for processes: the services the process
    relies on, whatever area they belong to.
    """

    name: str
    title: str
    kind: str = "area"
    owner: str = ""
    description: str = ""
    services: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "title": self.title, "kind": self.kind}
        _put(d, "owner", self.owner)
        _put(d, "description", self.description)
        _put(d, "services", list(self.services))
        _put(d, "links", [link.as_dict() for link in self.links])
        return d


@dataclass(frozen=True)
class Match:
    """Rules assigning a process to a service; see the module docstring.

    Regular expressions (RE2) and networks are compiled once, on
    construction; a pattern RE2 refuses raises ``ValueError`` (the parser
    reports it first, with its position).
    """

    comm: tuple[str, ...] = ()
    exe: tuple[str, ...] = ()
    cmdline: tuple[str, ...] = ()
    systemd_unit: tuple[str, ...] = ()
    k8s_labels: tuple[tuple[str, str], ...] = ()
    hosts: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    _exe: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())
    _cmdline: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())
    _nets: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_exe", tuple(_compile_regex(p) for p in self.exe))
        object.__setattr__(self, "_cmdline", tuple(_compile_regex(p) for p in self.cmdline))
        object.__setattr__(self, "_nets", tuple(ipaddress.ip_network(c) for c in self.cidrs))

    def is_empty(self) -> bool:
        return not (self.has_identity() or self.hosts or self.cidrs or self.ports)

    def has_identity(self) -> bool:
        return bool(self.comm or self.exe or self.cmdline or self.systemd_unit or self.k8s_labels)

    def matches(self, proc: Mapping[str, Any]) -> bool:
        """Whether a process (keys as in ``Catalog.match_service``) matches."""
        if self.is_empty():
            return False
        if self.has_identity() and not self._identity(proc):
            return False
        if self.hosts:
            host = str(proc.get("host") or "").lower()
            if not host or not any(fnmatch.fnmatchcase(host, h) for h in self.hosts):
                return False
        if self.cidrs:
            ip = _parse_ip(proc.get("ip"))
            if ip is None or not any(ip.version == n.version and ip in n for n in self._nets):
                return False
        if self.ports:
            try:
                port = int(proc.get("port") or 0)
            except (TypeError, ValueError):
                return False
            if port not in self.ports:
                return False
        return True

    def _identity(self, proc: Mapping[str, Any]) -> bool:
        comm = proc.get("comm") or ""
        if comm and comm in self.comm:
            return True
        exe = proc.get("exe") or ""
        if exe and self._exe and _search_any(self._exe, exe):
            return True
        cmdline = proc.get("cmdline") or ""
        if not isinstance(cmdline, str):
            cmdline = " ".join(str(a) for a in cmdline)
        if cmdline and self._cmdline and _search_any(self._cmdline, cmdline):
            return True
        unit = proc.get("unit") or ""
        if unit and any(fnmatch.fnmatchcase(unit, u) for u in self.systemd_unit):
            return True
        labels = proc.get("labels") or {}
        if self.k8s_labels and labels and all(labels.get(k) == v for k, v in self.k8s_labels):
            return True
        return False

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key in ("comm", "exe", "cmdline", "systemd_unit"):
            _put(d, key, list(getattr(self, key)))
        _put(d, "k8s_labels", dict(self.k8s_labels))
        for key in ("hosts", "cidrs", "ports"):
            _put(d, key, list(getattr(self, key)))
        return d


@dataclass(frozen=True)
class Virtual:
    """Addresses that stand for a service (a VIP, another box's NAT); see
    "Virtual addresses" in the module docstring."""

    cidrs: tuple[str, ...]
    ports: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    _nets: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())
    _sources: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nets", tuple(ipaddress.ip_network(c) for c in self.cidrs))
        object.__setattr__(self, "_sources", tuple(ipaddress.ip_network(c) for c in self.sources))

    def holds(self, ip: Any, port: int | None = None) -> bool:
        """Whether a server address (and port, when given) is one of these."""
        addr = _parse_ip(ip)
        if addr is None or (port and self.ports and int(port) not in self.ports):
            return False
        return any(n.version == addr.version and addr in n for n in self._nets)

    def is_source(self, ip: Any) -> bool:
        """Whether a client address is one the translation presents."""
        addr = _parse_ip(ip)
        return addr is not None and any(n.version == addr.version and addr in n for n in self._sources)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cidrs": list(self.cidrs)}
        _put(d, "ports", list(self.ports))
        _put(d, "sources", list(self.sources))
        return d


@dataclass(frozen=True)
class Service:
    """A service: owned by one area, recognised by its ``match`` rules,
    reached also through its ``virtual`` addresses."""

    name: str
    area: str
    title: str
    owner: str = ""
    tier: int = 0
    description: str = ""
    match: Match = field(default_factory=Match)
    links: tuple[Link, ...] = ()
    virtual: tuple[Virtual, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "area": self.area, "title": self.title}
        _put(d, "owner", self.owner)
        _put(d, "tier", self.tier)
        _put(d, "description", self.description)
        _put(d, "match", self.match.as_dict())
        _put(d, "virtual", [v.as_dict() for v in self.virtual])
        _put(d, "links", [link.as_dict() for link in self.links])
        return d


@dataclass(frozen=True)
class External:
    """A named endpoint outside the traced fleet (a SaaS API, a partner)."""

    name: str
    area: str = ""
    description: str = ""
    cidrs: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    _nets: tuple[Any, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nets", tuple(ipaddress.ip_network(c) for c in self.cidrs))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        _put(d, "area", self.area)
        _put(d, "description", self.description)
        _put(d, "cidrs", list(self.cidrs))
        _put(d, "hostnames", list(self.hostnames))
        _put(d, "ports", list(self.ports))
        return d


@dataclass(frozen=True)
class Catalog:
    """A validated catalog.  Build it with ``parse_catalog``/``load_catalog``.

    Equality compares content, so ``parse_catalog(c.to_yaml()) == c``.
    """

    areas: tuple[Area, ...] = ()
    services: tuple[Service, ...] = ()
    externals: tuple[External, ...] = ()

    # -- lookups ---------------------------------------------------------

    def area(self, name: str) -> Area | None:
        return next((a for a in self.areas if a.name == name), None)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def external(self, name: str) -> External | None:
        return next((e for e in self.externals if e.name == name), None)

    def match_service(self, proc: Mapping[str, Any]) -> str | None:
        """Name the service a process belongs to.

        Parameters
        ----------
        proc : mapping
            What the tracer knows about the process: ``comm``, ``exe``,
            ``cmdline`` (str, or argv list), ``unit`` (systemd unit),
            ``labels`` (Kubernetes pod labels), ``host``, ``ip`` (IPv4, IPv6 or
            IPv4-mapped IPv6) and ``port`` (a listening port).  Any key may be
            missing or empty; rules that need it then do not match.

        Returns
        -------
        str or None
            The first service in file order whose rules match, else None.
        """
        for svc in self.services:
            if svc.match.matches(proc):
                return svc.name
        return None

    def match_external(self, ip: str | None = None, hostname: str | None = None,
                       port: int | None = None) -> str | None:
        """Name the external endpoint an address or host name belongs to.

        A host name match wins over an address match; among address matches
        the longest prefix wins, so a narrow range can be carved out of a
        wide one regardless of order.  Externals with ``ports`` only match
        those ports (when ``port`` is given).
        """
        addr = _parse_ip(ip)
        host = (hostname or "").lower().rstrip(".")
        best: tuple[int, str] | None = None
        for ext in self.externals:
            if port and ext.ports and int(port) not in ext.ports:
                continue
            if host and any(_host_matches(host, h) for h in ext.hostnames):
                return ext.name
            if addr is not None:
                for net in ext._nets:
                    if net.version == addr.version and addr in net:
                        if best is None or net.prefixlen > best[0]:
                            best = (net.prefixlen, ext.name)
        return best[1] if best else None

    def match_virtual(self, ip: str | None, port: int | None = None) -> str | None:
        """Name the service a server address stands for by its ``virtual``
        entries (at most one can: overlaps on shared ports are refused)."""
        for svc in self.services:
            if any(v.holds(ip, port) for v in svc.virtual):
                return svc.name
        return None

    # -- serialisation ---------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The canonical plain-data form (what ``to_yaml`` writes)."""
        return {
            "version": FORMAT_VERSION,
            "areas": [a.as_dict() for a in self.areas],
            "services": [s.as_dict() for s in self.services],
            "externals": [e.as_dict() for e in self.externals],
        }

    def to_yaml(self) -> str:
        """The catalog as a YAML document that parses back to an equal one."""
        header = "# Phobos service catalog (canonical form; see tracer/catalog.py)\n"
        return header + yaml.safe_dump(self.as_dict(), sort_keys=False, allow_unicode=True,
                                       default_flow_style=False, width=100)

    def checksum(self) -> str:
        """sha256 hex digest of the canonical form; stable across formatting."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


# -- parsing ---------------------------------------------------------------

def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file.

    Raises
    ------
    CatalogError
        If the file cannot be read or is invalid; ``errors`` lists every
        problem as ``"file:line:col: message"``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError([f"{path}:1:1: cannot read the catalog: {exc}"]) from None
    return parse_catalog(text, source=str(path))


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Parse and validate catalog YAML.

    Parameters
    ----------
    text : str
        The YAML document (format in the module docstring).
    source : str
        Name used in error messages, normally the file path.

    Returns
    -------
    Catalog

    Raises
    ------
    CatalogError
        With every problem found (up to ``MAX_ERRORS``); nothing is returned
        unless the whole document is valid.

    Examples
    --------
    >>> c = parse_catalog("version: 1\\nareas: [{name: shop}]\\n"
    ...                   "services: [{name: web, area: shop, match: {comm: [nginx]}}]")
    >>> c.match_service({"comm": "nginx"})
    'web'
    """
    chk = _Checker(source)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _TooDeep as exc:
        chk.err(exc.problem_mark, f"the YAML is nested more than {_MAX_DEPTH} levels deep "
                "here (a catalog needs at most 6); look for unclosed '[' or '{' or a run of "
                "'-' items, and flatten the structure")
        raise CatalogError(chk.messages()) from None
    except RecursionError:
        raise CatalogError([f"{source}:1:1: the YAML is nested too deeply to read; a catalog "
                            "needs at most 6 levels"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark is not None:
            what += (f" ({exc.context} started at line {exc.context_mark.line + 1}, "
                     f"column {exc.context_mark.column + 1})")
        elif exc.context:
            what += f" ({exc.context})"
        chk.err(mark, f"YAML syntax error: {what}; fix the syntax here")
        raise CatalogError(chk.messages()) from None
    except yaml.YAMLError as exc:
        raise CatalogError([f"{source}:1:1: YAML error: {exc}"]) from None
    if root is None:
        raise CatalogError([f"{source}:1:1: the catalog is empty; start it with 'version: 1'"])
    doc = _Tree(chk).convert(root)
    catalog = _build(doc, chk) if not chk.errors else None
    if chk.errors or catalog is None:
        raise CatalogError(chk.messages())
    return catalog


class _TooDeep(yaml.MarkedYAMLError):
    """The document nests deeper than ``_MAX_DEPTH``; raised while composing."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses to compose nodes deeper than ``_MAX_DEPTH``.

    PyYAML's scanner and parser keep explicit stacks, but its composer
    recurses once per level, so depth is checked there, before the stack
    runs out; the error points at the first node that is too deep.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= _MAX_DEPTH and not self.check_event(yaml.AliasEvent):
            raise _TooDeep(problem="nested too deeply", problem_mark=self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Map(dict):
    """A YAML mapping that remembers where it and each of its entries are."""

    mark: Any
    keys_at: dict[str, Any]
    nodes: dict[str, Any]


class _Seq(list):
    """A YAML sequence that remembers where it and each of its items are."""

    mark: Any
    nodes: list[Any]


class _Checker:
    """Collects errors with their positions and formats them in file order."""

    def __init__(self, source: str):
        self.source = source
        self.errors: list[tuple[int, int, int, str]] = []

    def err(self, mark: Any, message: str) -> None:
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.errors.append((line, col, len(self.errors), message))

    def messages(self) -> list[str]:
        ordered = sorted(self.errors)
        out = [f"{self.source}:{line}:{col}: {msg}" for line, col, _, msg in ordered[:MAX_ERRORS]]
        if len(ordered) > MAX_ERRORS:
            line, col, _, _ = ordered[MAX_ERRORS]
            out.append(f"{self.source}:{line}:{col}: ... and {len(ordered) - MAX_ERRORS} more "
                       "errors not shown; fix the ones above first")
        return out


class _Tree:
    """Turns a composed YAML node tree into plain data with marks attached.

    PyYAML's constructors drop positions and silently keep the last of two
    duplicate keys; walking the nodes ourselves keeps both problems visible.
    """

    def __init__(self, chk: _Checker):
        self.chk = chk
        self.ctor = yaml.SafeLoader("")
        self.count = 0

    def convert(self, node: Any, depth: int = 0) -> Any:
        self.count += 1
        if self.count == _MAX_NODES or depth == 64:
            self.chk.err(node.start_mark, "document too deeply nested or too large "
                         "(check for recursive or repeated aliases)")
        if self.count >= _MAX_NODES or depth >= 64:
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, depth)
        if isinstance(node, yaml.SequenceNode):
            seq = _Seq(self.convert(n, depth + 1) for n in node.value)
            seq.mark, seq.nodes = node.start_mark, list(node.value)
            return seq
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.chk.err(node.start_mark, f"cannot read this value: {getattr(exc, 'problem', exc)}")
            return None

    def _mapping(self, node: Any, depth: int) -> _Map:
        m = _Map()
        m.mark, m.keys_at, m.nodes = node.start_mark, {}, {}
        try:
            self.ctor.flatten_mapping(node)  # resolves YAML merge keys (<<)
        except yaml.YAMLError as exc:
            self.chk.err(node.start_mark, f"bad merge key: {getattr(exc, 'problem', exc)}")
        for knode, vnode in node.value:
            if self.count >= _MAX_NODES:
                break  # already reported; more errors here would only be noise
            key = self.convert(knode, depth + 1) if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.chk.err(knode.start_mark, "keys must be plain words such as 'name'")
                continue
            if key in m:
                first = m.keys_at[key]
                self.chk.err(knode.start_mark, f"duplicate key '{key}' (first at line "
                             f"{first.line + 1}); keep only one")
                continue
            m[key] = self.convert(vnode, depth + 1)
            m.keys_at[key], m.nodes[key] = knode.start_mark, vnode
        return m


_TOP_KEYS = ("version", "areas", "services", "externals")
_AREA_KEYS = ("name", "title", "kind", "owner", "description", "services", "links")
_SERVICE_KEYS = ("name", "area", "title", "owner", "tier", "description", "match", "virtual",
                 "links")
_VIRTUAL_KEYS = ("cidrs", "ports", "sources")
_MATCH_KEYS = ("comm", "exe", "cmdline", "systemd_unit", "k8s_labels", "hosts", "cidrs", "ports")
_EXTERNAL_KEYS = ("name", "area", "description", "cidrs", "hostnames", "ports")
_LINK_KEYS = ("kind", "title", "url")


class _Fields:
    """Typed access to one mapping's entries, reporting errors at their marks."""

    def __init__(self, chk: _Checker, m: _Map, what: str, allowed: tuple[str, ...]):
        self.chk, self.m, self.what = chk, m, what
        for key in m:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
                chk.err(m.keys_at[key], f"unknown key '{key}' in {what}; {hint}")

    def at(self, key: str) -> Any:
        node = self.m.nodes.get(key)
        return node.start_mark if node is not None else self.m.mark

    def present(self, key: str) -> bool:
        return self.m.get(key) is not None

    def string(self, key: str, required: bool = False, default: str = "") -> str:
        v = self.m.get(key)
        if v is None:
            if required:
                self.chk.err(self.m.mark, f"{self.what} is missing required key '{key}'")
            return default
        if not isinstance(v, str):
            self.chk.err(self.at(key), f"'{key}' of {self.what} must be text, got "
                         f"{_kind(v)}; quote the value")
            return default
        return v.strip()

    def name(self, key: str = "name", required: bool = True) -> str:
        v = self.string(key, required=required)
        if v and not _NAME_RE.match(v):
            self.chk.err(self.at(key), f"'{v}' is not a valid name for {self.what}; use lower-case "
                         "letters, digits, '.', '_' and '-', starting with a letter or digit, "
                         "at most 63 characters")
            return ""
        return v

    def strings(self, key: str) -> list[tuple[str, Any]]:
        """A list of strings (a single string is accepted as a list of one)."""
        v = self.m.get(key)
        if v is None:
            return []
        if isinstance(v, str):
            return [(v.strip(), self.at(key))]
        if not isinstance(v, list):
            self.chk.err(self.at(key), f"'{key}' of {self.what} must be a list such as "
                         f"[a, b], got {_kind(v)}")
            return []
        out = []
        for item, node in zip(v, v.nodes):
            if not isinstance(item, str) or not item.strip():
                self.chk.err(node.start_mark, f"items of '{key}' in {self.what} must be non-empty "
                             f"text, got {_kind(item)}; quote the value")
            else:
                out.append((item.strip(), node.start_mark))
        return out

    def ports(self, key: str = "ports") -> list[int]:
        v = self.m.get(key)
        if v is None:
            return []
        items = [(v, self.at(key))] if not isinstance(v, list) else list(
            zip(v, (n.start_mark for n in v.nodes)))
        out = []
        for item, mark in items:
            if isinstance(item, str) and item.strip().isdigit():
                self.chk.err(mark, f"port {item!r} in {self.what} is quoted text; write it without "
                             "quotes")
            elif isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
                self.chk.err(mark, f"port {item!r} in {self.what} is not a TCP port; "
                             "use a whole number from 1 to 65535")
            elif item not in out:
                out.append(item)
        return out

    def cidrs(self, key: str = "cidrs") -> list[str]:
        return [net for net, _ in self.cidr_marks(key)]

    def cidr_marks(self, key: str = "cidrs") -> list[tuple[str, Any]]:
        """Valid ranges of ``key`` in canonical form, each with its position."""
        out: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for text, mark in self.strings(key):
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError:
                try:
                    fixed = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    self.chk.err(mark, f"'{text}' in {self.what} is not an IP range; write it "
                                 "as 10.1.2.0/24, 2001:db8::/32 or a single address")
                    continue
                self.chk.err(mark, f"'{text}' in {self.what} has host bits set; "
                             f"did you mean {fixed}?")
                continue
            mapped = net.network_address.ipv4_mapped if net.version == 6 else None
            if mapped is not None and net.prefixlen >= 96:
                # one spelling per range: the store keeps IPv4 in this form
                # and reads it back as IPv4
                net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
            if str(net) not in seen:
                seen.add(str(net))
                out.append((str(net), mark))
        return out

    def regexes(self, key: str) -> list[str]:
        out = []
        for text, mark in self.strings(key):
            problem = _regex_problem(text)
            if problem:
                self.chk.err(mark, f"'{key}' pattern {text!r} in {self.what} {problem}")
                continue
            out.append(text)
        return out

    def links(self, key: str = "links") -> tuple[Link, ...]:
        v = self.m.get(key)
        if v is None:
            return ()
        if not isinstance(v, list):
            self.chk.err(self.at(key), f"'links' of {self.what} must be a list of "
                         "{kind, title, url}")
            return ()
        out = []
        for item, node in zip(v, v.nodes):
            if not isinstance(item, _Map):
                self.chk.err(node.start_mark, f"each link of {self.what} must be a mapping "
                             "{kind, title, url}")
                continue
            f = _Fields(self.chk, item, f"a link of {self.what}", _LINK_KEYS)
            kind = f.string("kind", required=True)
            if kind and kind not in LINK_KINDS:
                close = difflib.get_close_matches(kind, LINK_KINDS, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                f.chk.err(f.at("kind"), f"unknown link kind '{kind}'; {hint}use one of "
                          + ", ".join(LINK_KINDS))
            url = f.string("url", required=True)
            if url:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
                    f.chk.err(f.at("url"), f"link url '{url}' must be an absolute http:// or "
                              "https:// address")
            out.append(Link(kind=kind, title=f.string("title") or kind, url=url))
        return tuple(out)


def _build(doc: Any, chk: _Checker) -> Catalog | None:
    if not isinstance(doc, _Map):
        mark = getattr(doc, "mark", None)
        chk.err(mark, "the catalog must be a mapping with keys version, areas, services, externals")
        return None
    top = _Fields(chk, doc, "the catalog", _TOP_KEYS)
    version = doc.get("version")
    if version is None:
        chk.err(doc.mark, "the catalog is missing 'version: 1' at the top")
    elif version != FORMAT_VERSION or isinstance(version, bool):
        chk.err(top.at("version"), f"unsupported catalog version {version!r}; this Phobos "
                f"reads version {FORMAT_VERSION}")

    areas, area_refs = _areas(doc, top, chk)
    services, service_refs = _services(doc, top, chk)
    externals, external_refs = _externals(doc, top, chk)

    # Cross-references are checked once every section is read, so the order
    # of sections in the file does not matter.
    area_kind = {a.name: a.kind for a in areas}
    for name, mark in service_refs:
        if name not in area_kind:
            chk.err(mark, f"area '{name}' is not defined; add it under 'areas' or fix the name"
                    + _did_you_mean(name, area_kind))
        elif area_kind[name] != "area":
            chk.err(mark, f"'{name}' is a business process, not an area; a service belongs to "
                    "an area of kind: area (list it in the process's 'services' instead)")
    for name, mark in external_refs:
        if name not in area_kind:
            chk.err(mark, f"area '{name}' is not defined; add it under 'areas' or fix the name"
                    + _did_you_mean(name, area_kind))
        elif area_kind[name] != "area":
            chk.err(mark, f"'{name}' is a business process, not an area; draw the external "
                    "in an area of kind: area")
    service_names = {s.name for s in services}
    for name, mark in area_refs:
        if name not in service_names:
            chk.err(mark, f"service '{name}' is not defined; add it under 'services' or fix "
                    "the name" + _did_you_mean(name, service_names))
    if chk.errors:
        return None
    owners = {a.name: a.owner for a in areas}
    services = [s if s.owner else replace(s, owner=owners.get(s.area, "")) for s in services]
    return Catalog(areas=tuple(sorted(areas, key=lambda a: a.name)), services=tuple(services),
                   externals=tuple(sorted(externals, key=lambda e: e.name)))


def _section(doc: _Map, top: _Fields, chk: _Checker, key: str) -> list[_Map]:
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        chk.err(top.at(key), f"'{key}' must be a list of mappings, each starting with '- name:'")
        return []
    out = []
    for item, node in zip(v, v.nodes):
        if isinstance(item, _Map):
            out.append(item)
        else:
            chk.err(node.start_mark, f"each entry of '{key}' must be a mapping such as "
                    "'- name: x'")
    return out


def _unique(chk: _Checker, seen: dict[str, Any], name: str, mark: Any, what: str) -> None:
    if name in seen:
        chk.err(mark, f"{what} '{name}' is defined twice (first at line {seen[name].line + 1}); "
                "names must be unique")
    else:
        seen[name] = mark


def _areas(doc: _Map, top: _Fields, chk: _Checker) -> tuple[list[Area], list]:
    areas, refs, seen = [], [], {}
    for m in _section(doc, top, chk, "areas"):
        label = f"area '{m['name']}'" if isinstance(m.get("name"), str) else "an area"
        f = _Fields(chk, m, label, _AREA_KEYS)
        name = f.name()
        if name:
            _unique(chk, seen, name, f.at("name"), "area")
        kind = f.string("kind", default="area")
        if kind not in AREA_KINDS:
            chk.err(f.at("kind"), f"kind '{kind}' of {label} must be 'area' or 'process'")
        names = f.strings("services")
        if kind == "area" and f.present("services"):
            chk.err(f.at("services"), f"'services' is only for kind: process; a service joins "
                    f"{label} by naming it in its own 'area' key")
        if kind == "process" and not names:
            chk.err(f.at("services") if f.present("services") else m.mark,
                    f"business process {label} needs 'services': the services it relies on")
        if kind == "process":
            refs.extend(names)
        areas.append(Area(name=name, title=f.string("title") or name, kind=kind,
                          owner=f.string("owner"), description=f.string("description"),
                          services=tuple(dict.fromkeys(n for n, _ in names)),
                          links=f.links()))
    return areas, refs


def _services(doc: _Map, top: _Fields, chk: _Checker) -> tuple[list[Service], list]:
    services, refs, seen = [], [], {}
    spans: list[_Span] = []
    for m in _section(doc, top, chk, "services"):
        label = f"service '{m['name']}'" if isinstance(m.get("name"), str) else "a service"
        f = _Fields(chk, m, label, _SERVICE_KEYS)
        name = f.name()
        if name:
            _unique(chk, seen, name, f.at("name"), "service")
        area = f.name("area")
        if area:
            refs.append((area, f.at("area")))
        tier = m.get("tier")
        if tier is not None and (isinstance(tier, bool) or tier not in TIERS):
            chk.err(f.at("tier"), f"tier {tier!r} of {label} must be a whole number from "
                    f"{TIERS.start} (most critical) to {TIERS.stop - 1}")
            tier = None
        services.append(Service(
            name=name, area=area, title=f.string("title") or name, owner=f.string("owner"),
            tier=tier or 0, description=f.string("description"),
            match=_match(chk, m, f, label), links=f.links(),
            virtual=_virtuals(chk, m, f, label, name, spans)))
    _overlaps(chk, spans)
    return services, refs


@dataclass(frozen=True)
class _Span:
    """One virtual range as numbers in the IPv6 space the store uses (IPv4
    mapped), so that 10.0.0.0/24 and ::ffff:10.0.0.0/120 are one range."""

    lo: int
    hi: int
    service: str
    ports: frozenset[int]
    text: str
    mark: Any


def _virtuals(chk: _Checker, parent: _Map, pf: _Fields, label: str, name: str,
              spans: list[_Span]) -> tuple[Virtual, ...]:
    v = parent.get("virtual")
    if v is None:
        return ()
    if not isinstance(v, list):
        chk.err(pf.at("virtual"), f"'virtual' of {label} must be a list of mappings such as "
                "- {cidrs: [198.51.100.10], ports: [443]}")
        return ()
    out = []
    for item, node in zip(v, v.nodes):
        if not isinstance(item, _Map):
            chk.err(node.start_mark, f"each entry of 'virtual' in {label} must be a mapping "
                    "{cidrs, ports, sources}")
            continue
        what = f"a virtual entry of {label}"
        f = _Fields(chk, item, what, _VIRTUAL_KEYS)
        cidrs = f.cidr_marks("cidrs")
        if not f.present("cidrs"):
            chk.err(item.mark, f"{what} is missing required key 'cidrs': the addresses that "
                    "stand for the service")
        elif item["cidrs"] == []:
            chk.err(f.at("cidrs"), f"'cidrs' of {what} is empty; list the addresses that "
                    "stand for the service")
        ports = f.ports()
        sources = f.cidrs("sources")
        for text, mark in cidrs:
            lo, hi = _span(text)
            spans.append(_Span(lo, hi, name, frozenset(ports), text, mark))
        if cidrs:
            out.append(Virtual(cidrs=tuple(t for t, _ in cidrs), ports=tuple(ports),
                               sources=tuple(sources)))
    return tuple(out)


def _span(cidr: str) -> tuple[int, int]:
    net = ipaddress.ip_network(cidr)
    base = (0xFFFF << 32) if net.version == 4 else 0
    return base | int(net.network_address), base | int(net.broadcast_address)


def _overlaps(chk: _Checker, spans: list[_Span]) -> None:
    """Report virtual ranges of two services that share an address on a
    shared port: such an address would stand for both.

    Ranges are CIDR blocks, so two of them are nested or apart: sorted by
    start (wider first), the ranges still open at a start all hold it, and
    they are one chain of nested ranges (plus equal ones on other ports),
    so each range is compared with a few others rather than with all."""
    chain: list[_Span] = []
    for cur in sorted(spans, key=lambda x: (x.lo, -x.hi)):
        while chain and chain[-1].hi < cur.lo:
            chain.pop()
        for other in chain:
            if other.service == cur.service:
                continue
            if other.ports and cur.ports and not other.ports & cur.ports:
                continue  # one address, different ports: one balancer, two services
            first, then = sorted((other, cur), key=lambda x: (x.mark.line, x.mark.column))
            shared = sorted(first.ports & then.ports if first.ports and then.ports
                            else first.ports | then.ports)
            on = f" on port{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))}" \
                if shared else ""
            chk.err(then.mark, f"virtual range '{then.text}' of service '{then.service}' overlaps "
                    f"'{first.text}' of service '{first.service}' (line {first.mark.line + 1})"
                    f"{on}; an address stands for one service: narrow a range or give the "
                    "entries different ports")
        chain.append(cur)


def _match(chk: _Checker, parent: _Map, pf: _Fields, label: str) -> Match:
    m = parent.get("match")
    if m is None:
        return Match()
    if not isinstance(m, _Map):
        chk.err(pf.at("match"), f"'match' of {label} must be a mapping of rules such as "
                "{comm: [name]}")
        return Match()
    what = f"the match rules of {label}"
    f = _Fields(chk, m, what, _MATCH_KEYS)
    comm = []
    for text, mark in f.strings("comm"):
        if len(text.encode()) > _COMM_MAX:
            chk.err(mark, f"comm '{text}' is longer than {_COMM_MAX} bytes and can never match "
                    "(the kernel truncates task names); use 'exe' or 'cmdline' instead")
        else:
            comm.append(text)
    labels: dict[str, str] = {}
    raw = m.get("k8s_labels")
    if raw is not None and not isinstance(raw, _Map):
        chk.err(f.at("k8s_labels"), f"'k8s_labels' in {what} must be a mapping such as "
                "{app.kubernetes.io/name: ledger}")
    elif raw is not None:
        for key, node in raw.nodes.items():
            # Label values are always strings in Kubernetes; take the source
            # text so that unquoted `true` or `1.0` mean what they look like.
            if not isinstance(node, yaml.ScalarNode) or not node.value:
                chk.err(node.start_mark, f"label '{key}' in {what} needs a plain text value")
            else:
                labels[key] = node.value
    return Match(
        comm=tuple(dict.fromkeys(comm)),
        exe=tuple(dict.fromkeys(f.regexes("exe"))),
        cmdline=tuple(dict.fromkeys(f.regexes("cmdline"))),
        systemd_unit=tuple(dict.fromkeys(t for t, _ in f.strings("systemd_unit"))),
        k8s_labels=tuple(sorted(labels.items())),
        hosts=tuple(dict.fromkeys(t.lower() for t, _ in f.strings("hosts"))),
        cidrs=tuple(f.cidrs()),
        ports=tuple(f.ports()),
    )


def _externals(doc: _Map, top: _Fields, chk: _Checker) -> tuple[list[External], list]:
    externals, refs, seen = [], [], {}
    service_names: dict[str, Any] = {}
    raw_services = doc.get("services")
    for m in raw_services if isinstance(raw_services, list) else ():
        if isinstance(m, _Map) and isinstance(m.get("name"), str):
            service_names.setdefault(m["name"], m.keys_at["name"])
    for m in _section(doc, top, chk, "externals"):
        label = f"external '{m['name']}'" if isinstance(m.get("name"), str) else "an external"
        f = _Fields(chk, m, label, _EXTERNAL_KEYS)
        name = f.name()
        if name:
            _unique(chk, seen, name, f.at("name"), "external")
            if name in service_names:
                chk.err(f.at("name"), f"'{name}' is already a service (line "
                        f"{service_names[name].line + 1}); services and externals share one "
                        "namespace in the graph, rename one")
        area = f.name("area", required=False)
        if area:
            refs.append((area, f.at("area")))
        hostnames = []
        for text, mark in f.strings("hostnames"):
            host = text.lower().rstrip(".")
            if not _HOSTNAME_RE.match(host):
                chk.err(mark, f"'{text}' in {label} is not a host name; write api.example.com "
                        "or *.example.com")
            elif host not in hostnames:
                hostnames.append(host)
        cidrs = f.cidrs()
        if not (f.present("cidrs") or f.present("hostnames")):
            chk.err(m.mark, f"{label} needs 'cidrs' or 'hostnames' (or both) to be recognised")
        externals.append(External(name=name, area=area, description=f.string("description"),
                                  cidrs=tuple(cidrs), hostnames=tuple(hostnames),
                                  ports=tuple(f.ports())))
    return externals, refs


# -- helpers ---------------------------------------------------------------

def _put(d: dict, key: str, value: Any) -> None:
    """Set ``key`` only when ``value`` is not empty, to keep output short."""
    if value not in ("", 0, [], {}, None):
        d[key] = value


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, _Map):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    return f"a {type(v).__name__}"


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_ip(value: Any) -> Any:
    """An ``ipaddress`` object, with IPv4-mapped IPv6 turned back into IPv4."""
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _regex_problem(pattern: str) -> str | None:
    """None if RE2 takes ``pattern`` within the size cap, else what to change.

    The text continues "'cmdline' pattern '...' in <where> ".
    """
    try:
        rx = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        detail = str(detail) or "rejected"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                re.compile(pattern)
                python_ok = True
            except (re.error, RecursionError, OverflowError, ValueError):
                python_ok = False
        hint = _re2_hint(detail)
        if python_ok:
            return (f"is not a valid regular expression in RE2 syntax ({detail}): {hint}. "
                    "Python's re accepts it, but catalog regexes must be RE2 syntax, which "
                    f"matches in linear time: {_RE2_SYNTAX}")
        return f"is not a valid regular expression ({detail}): {hint}"
    if rx.programsize > _REGEX_MAX_PROGRAM:
        return (f"is too large: it compiles to {rx.programsize} RE2 instructions, more than "
                f"{_REGEX_MAX_PROGRAM}; simplify it (large counted repetitions such as "
                "'.{1000}' and Unicode classes under repetition are the usual cause)")
    return None


def _re2_hint(detail: str) -> str:
    """How to fix the pattern RE2 refused with ``detail``."""
    op = detail.partition(": ")[2]
    if op in ("(?=", "(?!", "(?<=", "(?<!"):
        return "RE2 has no lookahead or lookbehind; match the text itself instead"
    if op == "\\Z":
        return "RE2 writes end of text as \\z, not \\Z"
    if re.fullmatch(r"\\[1-9]", op) or op == "(?P" or op.startswith("(?P="):
        return "RE2 has no backreferences; spell out what the group matched"
    if op == "(?>" or (detail.startswith("bad repetition operator") and op.endswith("+")):
        return ("RE2 has no atomic groups or possessive quantifiers, and needs none (it never "
                "backtracks); drop the '?>' or the extra '+'")
    if op.startswith("(?"):
        return "RE2 has only the flags i, m, s and U, and no (?#...) comments"
    if detail.startswith("invalid repetition size"):
        return "RE2 allows counted repetition up to {1000}"
    if detail.startswith("pattern too large"):
        return "simplify it (large counted repetitions are the usual cause)"
    return "escape special characters with a backslash"


def _compile_regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2; ``ValueError`` saying why if it cannot be."""
    problem = _regex_problem(pattern)
    if problem:
        raise ValueError(f"catalog pattern {pattern!r} {problem}")
    return re2.compile(pattern, _RE2_OPTIONS)


def _search_any(patterns: Iterable[Any], text: Any) -> bool:
    """Whether any RE2 pattern is found in ``text`` (str, or bytes as UTF-8)."""
    if not isinstance(text, bytes):
        text = str(text)
        try:
            text = text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text).encode("utf-8")
    return any(p.search(text) is not None for p in patterns)


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern
