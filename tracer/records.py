"""The record contract between the tracer, Kafka and ClickHouse.

Two record types cross every boundary in Phobos, one JSON object per line
(ClickHouse's ``JSONEachRow``):

* ``ConnectionRecord`` - one per (host, netns, pid, direction, endpoint pair)
  and interval: what that process did with that peer during the interval and
  how many connections were open at its end.
* ``ListenerRecord`` - one per listening endpoint of a host and interval; the
  backend uses them to resolve a client's remote ip:port to the server's
  service *as of that time*.

Fields appended after version 1 shipped carry a default (``Field.default``)
and may be omitted: a record without them validates, normalised with the
default, so older tracers keep working without a version change.

The field lists below are the single definition in code; ``sql/`` holds the
matching columns and ``tests/test_contract.py`` keeps the two equal.  Records
are versioned by the ``v`` field so that consumers can refuse what they do not
understand instead of guessing.

Validation is strict on purpose: a record that is silently coerced (a
negative count wrapped to 4 billion, an IP that is really a host name) poisons
the rollups for the whole retention period.  ``validate_batch`` therefore
returns the good records and a list of ``Rejection`` that say which record and
field was wrong, so an ingest endpoint can store the good part of a batch and
report the rest.
"""

from __future__ import annotations

import ipaddress
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable

from tracer.timestamps import format_ts, parse_iso

__all__ = [
    "VERSION",
    "Field",
    "CONNECTION_FIELDS",
    "LISTENER_FIELDS",
    "RECORD_FIELDS",
    "MAX_TEXT",
    "Rejection",
    "RecordError",
    "validate",
    "validate_batch",
    "format_ts",
    "parse_ts",
    "normalize_ip",
    "HANDSHAKE_BUCKETS",
    "HANDSHAKE_MIN_LOG2",
    "handshake_bucket",
    "handshake_bounds",
    "handshake_quantile",
    "add_handshake_hists",
]

VERSION = 1

U8, U16, U32, U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1
#: Longest text field, in characters.
MAX_TEXT = 4096

#: The handshake latency histogram (``handshake_hist``), as the kernel fills
#: it (tracer/bpf/phobos.c, HS_BUCKETS and HS_MIN_LOG2; a test keeps them
#: equal): bucket 0 holds latencies below 2**HANDSHAKE_MIN_LOG2 us; above,
#: each power of two n is split into [2**n, 1.5 * 2**n) and [1.5 * 2**n,
#: 2**(n+1)); the last bucket is open-ended (from 2**22 us, 4.2 s).
HANDSHAKE_BUCKETS = 32
HANDSHAKE_MIN_LOG2 = 7


def handshake_bucket(us: int) -> int:
    """The bucket of a latency in microseconds (what the kernel computes)."""
    if us < 1 << HANDSHAKE_MIN_LOG2:
        return 0
    n = min(int(us), 2**32 - 1).bit_length() - 1
    b = 2 * (n - HANDSHAKE_MIN_LOG2) + ((int(us) >> (n - 1)) & 1) + 1
    return min(b, HANDSHAKE_BUCKETS - 1)


def handshake_bounds(bucket: int) -> tuple[float, float]:
    """[low, high) of a bucket in microseconds; the last one's high is infinite."""
    if bucket == 0:
        return 0.0, float(1 << HANDSHAKE_MIN_LOG2)
    n, upper_half = divmod(bucket - 1, 2)
    base = float(1 << (HANDSHAKE_MIN_LOG2 + n))
    low = base * (1.5 if upper_half else 1.0)
    high = float("inf") if bucket == HANDSHAKE_BUCKETS - 1 else base * (2.0 if upper_half else 1.5)
    return low, high


_BOUNDS = tuple(handshake_bounds(b) for b in range(HANDSHAKE_BUCKETS))


def handshake_quantile(hist: "list[int] | tuple[int, ...]", q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram, in microseconds; None when it is empty.

    Linear within the bucket the quantile falls in (the open-ended last
    bucket gives its lower bound), so the estimate is off by at most the
    bucket's width: a third of its value above 128 us.
    """
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bucket, n in enumerate(hist):
        if n and seen + n >= rank:
            low, high = _BOUNDS[bucket] if bucket < HANDSHAKE_BUCKETS else handshake_bounds(bucket)
            if high == float("inf"):
                return low
            return low + (high - low) * (rank - seen) / n
        seen += n
    return handshake_bounds(len(hist) - 1)[0]


def add_handshake_hists(a: "list[int]", b: "list[int]") -> "list[int]":
    """Two histograms added bucket by bucket, as a new list (either may be
    empty, or shorter where a store trimmed it); neither is changed."""
    if not b:
        return list(a)
    if not a:
        return list(b)
    if len(a) == len(b):
        return list(map(operator.add, a, b))
    if len(a) < len(b):
        a, b = b, a
    return [n + (b[i] if i < len(b) else 0) for i, n in enumerate(a)]


@dataclass(frozen=True)
class Field:
    """One field of a record.

    ``kind`` is the wire type (what JSON carries; ``uints`` is a list of
    whole numbers, each at most ``max``, empty or ``length`` long); ``sql``
    the ClickHouse column type that ``sql/`` must declare for it.  A field with a
    ``default`` (already in its normalised form) is optional: a record
    without it is read as if it carried the default, so producers older
    than the field keep speaking the same version; a value that is present
    is checked like any other.
    """

    name: str
    kind: str  # "uint" | "uints" | "str" | "ip" | "ts" | "enum"
    sql: str
    max: int = 0
    length: int = 0
    choices: tuple[str, ...] = ()
    doc: str = ""
    default: Any = None

    @property
    def optional(self) -> bool:
        return self.default is not None


def _u(name: str, bits_max: int, sql: str, doc: str) -> Field:
    return Field(name, "uint", sql, max=bits_max, doc=doc)


def _s(name: str, sql: str, doc: str) -> Field:
    return Field(name, "str", sql, doc=doc)


_COMMON_HEAD = (
    _u("v", U8, "UInt8", "record version; this code writes and reads version 1"),
    Field("ts", "ts", "DateTime('UTC')", doc="end of the interval, UTC"),
)
_IDENTITY = (
    _s("dc", "LowCardinality(String)", "datacenter / zone label of the host"),
    _s("host", "LowCardinality(String)", "host name of the reporting tracer"),
)
_PROCESS = (
    _u("pid", U32, "UInt32", "process id (host pid namespace)"),
    _s("comm", "LowCardinality(String)", "kernel task name of the process"),
    _s("service", "LowCardinality(String)", "service name attributed by the tracer"),
    _s("container_id", "String", "container id from the cgroup path, or empty"),
    _s("pod", "String", "Kubernetes pod name, or empty"),
    _s("namespace", "LowCardinality(String)", "Kubernetes namespace, or empty"),
)

CONNECTION_FIELDS: tuple[Field, ...] = (
    *_COMMON_HEAD,
    _u("interval_s", U32, "UInt32", "length of the interval in seconds"),
    *_IDENTITY,
    Field("host_ip", "ip", "IPv6", doc="primary address of the host"),
    _u("netns", U32, "UInt32", "network namespace inode number"),
    *_PROCESS,
    Field(
        "direction",
        "enum",
        "Enum8('outbound' = 1, 'inbound' = 2)",
        choices=("outbound", "inbound"),
        doc="outbound: this process connected; inbound: it accepted",
    ),
    Field("local_ip", "ip", "IPv6", doc="local address"),
    _u("local_port", U16, "UInt16", "local port; 0 for a client's ephemeral port"),
    Field("remote_ip", "ip", "IPv6", doc="peer address"),
    _u("remote_port", U16, "UInt16", "peer port; 0 for a server's peer ephemeral port"),
    _u("connects", U32, "UInt32", "connect attempts started in the interval"),
    _u("accepts", U32, "UInt32", "connections accepted in the interval"),
    _u("closes", U32, "UInt32", "established connections closed in the interval"),
    _u("failures", U32, "UInt32", "connects that never got established (refused, timed out)"),
    _u("open", U32, "UInt32", "connections open at the end of the interval"),
    _u("duration_ms_sum", U64, "UInt64", "summed lifetime of the connections closed"),
    _u("bytes_sent", U64, "UInt64", "bytes sent, 0 where unknown"),
    _u("bytes_received", U64, "UInt64", "bytes received, 0 where unknown"),
    # Optional (added after v1 shipped; older tracers omit them).
    Field("nat_ip", "ip", "IPv6", default="::",
          doc="outbound records whose destination NAT rewrote: the address the socket connected to "
              "(remote_ip is then where the connection went, see tracer/nat.py); :: otherwise"),
    Field("nat_port", "uint", "UInt16", max=U16, default=0,
          doc="the port the socket connected to when nat_ip is set; 0 otherwise"),
    # Optional: health of the edge (tracer/bpf/phobos.c); 0 and [] from older tracers.
    Field("handshakes", "uint", "UInt32", max=U32, default=0,
          doc="connects whose handshake completed in the interval (SYN_SENT to ESTABLISHED)"),
    Field("handshake_us_sum", "uint", "UInt64", max=U64, default=0,
          doc="summed time of those handshakes, microseconds (a lost SYN costs its retransmission timeout)"),
    Field("handshake_hist", "uints", "Array(UInt32)", max=U32, length=HANDSHAKE_BUCKETS, default=(),
          doc="those handshakes by latency bucket (handshake_bounds); empty when there were none"),
    Field("retransmits", "uint", "UInt64", max=U64, default=0,
          doc="segments retransmitted by the connections closed in the interval"),
    Field("aborts", "uint", "UInt32", max=U32, default=0,
          doc="established connections closed without the FIN exchange (a reset sent or received, a timeout)"),
)

LISTENER_FIELDS: tuple[Field, ...] = (
    *_COMMON_HEAD,
    *_IDENTITY,
    Field("ip", "ip", "IPv6", doc="listening address (:: for any)"),
    _u("port", U16, "UInt16", "listening port"),
    *_PROCESS,
)

#: Record kind -> its fields; the kind is also the ClickHouse table name.
RECORD_FIELDS: dict[str, tuple[Field, ...]] = {
    "connections": CONNECTION_FIELDS,
    "listeners": LISTENER_FIELDS,
}


class RecordError(ValueError):
    """A record that does not satisfy the contract."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Rejection:
    """Why the record at ``index`` of a batch was refused."""

    index: int
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


def parse_ts(value: Any) -> int:
    """Seconds since the epoch from the wire form (ISO 8601 or a number).

    Naive ISO strings are taken as UTC, which is what the tracer writes.
    """
    if isinstance(value, bool):
        raise RecordError("must be an ISO 8601 time or seconds since the epoch, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0 or value > U32:
            raise RecordError(f"{value!r} is outside 1970..2106")
        return int(value)
    if isinstance(value, str):
        seconds = parse_iso(value)
        if seconds is None:
            raise RecordError(f"{value!r} is not an ISO 8601 time")
        if seconds < 0 or seconds > U32:
            raise RecordError(f"{value!r} is outside 1970..2106")
        return seconds
    raise RecordError(f"must be an ISO 8601 time, got {type(value).__name__}")


def normalize_ip(value: Any) -> str:
    """The canonical text of an address as ClickHouse stores it (IPv6).

    IPv4 addresses become IPv4-mapped IPv6 (``::ffff:10.0.0.1``), the form
    the ``IPv6`` columns hold, so the same peer compares equal whether a
    record came from an IPv4 or a dual-stack socket.
    """
    if not isinstance(value, str):
        raise RecordError(f"must be an IP address string, got {type(value).__name__}")
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise RecordError(f"{value!r} is not an IP address") from None
    if getattr(addr, "scope_id", None):
        # fe80::1%eth0: the zone names an interface of the sender's host only,
        # and an IPv6 column cannot hold it (it would be stored as ::).
        raise RecordError(f"{value!r} has a zone (%{addr.scope_id}); send the address without it")
    if addr.version == 4:
        return f"::ffff:{addr}"
    if addr.ipv4_mapped is not None:
        # Python < 3.13 prints mapped addresses in hex; ClickHouse does not.
        return f"::ffff:{addr.ipv4_mapped}"
    return str(addr)


def _check(field: Field, value: Any) -> Any:
    if field.kind == "uint":
        # bool is an int in Python but never a count on the wire.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise RecordError(f"must be a whole number, got {value!r}")
        if value < 0:
            raise RecordError(f"must not be negative, got {value}")
        if value > field.max:
            raise RecordError(f"{value} is larger than {field.max}")
        return value
    if field.kind == "uints":
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"must be a list of whole numbers, got {type(value).__name__}")
        if len(value) not in (0, field.length):
            raise RecordError(f"must hold {field.length} numbers or none, got {len(value)}")
        item = Field(field.name, "uint", "", max=field.max)
        try:
            return [_check(item, v) for v in value]
        except RecordError as err:
            raise RecordError(f"item {err}") from None
    if field.kind == "str":
        if not isinstance(value, str):
            raise RecordError(f"must be a string, got {type(value).__name__}")
        if len(value) > MAX_TEXT:
            raise RecordError(f"is {len(value)} characters long, at most {MAX_TEXT} allowed")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                # A "\ud800" escape decodes to a lone surrogate, which no store can hold.
                raise RecordError(f"is not valid Unicode ({err.reason} at character {err.start})") from None
        return value
    if field.kind == "ip":
        return normalize_ip(value)
    if field.kind == "ts":
        return parse_ts(value)
    if field.kind == "enum":
        if value not in field.choices:
            raise RecordError(f"must be one of {', '.join(field.choices)}, got {value!r}")
        return value
    raise AssertionError(field.kind)


def validate(kind: str, record: Any) -> dict[str, Any]:
    """Check one record of ``kind`` and return it normalised.

    Normalised means: ``ts`` as epoch seconds, IPs in ClickHouse's IPv6 text
    form.  Unknown extra fields are refused rather than dropped, because they
    mean the producer speaks a contract this consumer does not know.

    Raises
    ------
    RecordError
        With ``field`` set to the offending field (None for the record).
    """
    fields = RECORD_FIELDS.get(kind)
    if fields is None:
        raise RecordError(f"unknown record kind {kind!r}; known: {', '.join(RECORD_FIELDS)}")
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    version = record.get("v")
    if version != VERSION:
        raise RecordError(f"unsupported record version {version!r}; this Phobos reads v={VERSION}", "v")
    out: dict[str, Any] = {}
    for field in fields:
        if field.name not in record:
            if field.optional:
                out[field.name] = list(field.default) if field.kind == "uints" else field.default
                continue
            raise RecordError(f"missing field {field.name!r}", field.name)
        try:
            out[field.name] = _check(field, record[field.name])
        except RecordError as err:
            raise RecordError(f"field {field.name!r} {err}", field.name) from None
    extra = set(record) - set(out)
    if extra:
        raise RecordError(f"unknown fields {', '.join(sorted(extra))}", sorted(extra)[0])
    return out


def validate_batch(kind: str, records: Iterable[Any]) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Split a batch into normalised good records and rejections."""
    good: list[dict[str, Any]] = []
    bad: list[Rejection] = []
    for index, record in enumerate(records):
        try:
            good.append(validate(kind, record))
        except RecordError as err:
            bad.append(Rejection(index, err.field, str(err)))
    return good, bad
