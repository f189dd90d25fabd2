"""TCP endpoint rows -> client -> server edges: the resolution as SQL, over a ``Window``.

The window is ``[T - W, T)`` over ``edges_1m`` (``edges_1h`` for windows of
six hours and more, where minute detail would only cost time).

* **Outbound records** (the client is traced) are authoritative.  The
  server is the listener that owned ``remote_ip:remote_port`` *at the time
  of the minute bucket*: an ``ASOF LEFT JOIN`` on ``listener_spans`` picks,
  per bucket, the span with the latest ``first_seen`` not after the bucket's
  end, and the match only counts if the bucket started before that span's
  ``last_seen`` plus a slack.  An address handed to another service by a
  deploy therefore resolves to the old owner before the deploy and to the
  new one after it, never to both.  Listeners on the wildcard address are
  expanded to the addresses their host (or pod) was seen accepting on, and
  loopback addresses only match listeners of the same host.
* **Inbound records** add the clients that are not traced: a record whose
  client address belongs to no traced host in the window (neither a host
  address nor the local address of an outbound record) is kept, anything
  else was already counted from the client's side - so an edge seen from
  both ends is counted once.
* Whatever no listener explains is looked up in the catalog: services'
  virtual addresses (on their ports) first, then services'
  ``cidrs``/``ports``, then externals (longest prefix wins within each),
  else it is the ``INTERNET`` node. Client addresses skip the virtual ones.
* Inbound records of a service from the ``sources`` of its virtual
  addresses are left out: they are the connections its traced clients
  reported through the virtual address (``tracer/catalog.py``, "Virtual
  addresses", says what that costs).

``resolved_sql`` is run by the resolution stage (``stage.py``) once per
minute, without the catalog (what no listener explains stays an address;
the catalog is applied when the rows are read), and by the views
(``api.views.reads``) for the minutes the stage has not reached, with it.
Caveat of that fallback for long windows: from six hours on it reads the
hourly rollup, so an address that changed owner *within* an hour is
attributed, for that hour, to the owner that started last in it. The
stage's own hourly rows are sums of minutes resolved one by one and have
no such caveat.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.catalog.lookups import INTERNET, UNASSIGNED, lookups_sql, version_sql

__all__ = ["Window", "HOURLY_FROM", "resolved_sql", "ip_text"]

#: Windows from this length on read the hourly rollup.
HOURLY_FROM = 6 * 3600


@dataclass(frozen=True)
class Window:
    """The time range ``[start, end)`` a view covers, in epoch seconds.

    ``end`` is the ``at`` of the API (snapped down to the rollup's bucket, so
    a partly written minute is never shown as a drop) and ``seconds`` the
    length used to turn sums into per-second values.
    """

    start: int
    end: int

    @classmethod
    def at(cls, at: int, window: int, live: bool = False) -> "Window":
        """The window of ``window`` seconds ending at ``at``.

        ``live``: ``at`` is the present, and the minute being written is
        shown as far as it has been (``end = at``) rather than left out, so
        a map is never blank in its first minute; sums are then per second
        of the time covered.
        """
        bucket = 3600 if window >= HOURLY_FROM else 60
        end = at // bucket * bucket
        length = max(bucket, -(-window // bucket) * bucket)
        if live and bucket == 60 and at > end:
            return cls(end - length + 60, int(at))
        return cls(end - length, end)

    @property
    def seconds(self) -> int:
        return self.end - self.start

    @property
    def bucket(self) -> int:
        return 3600 if self.seconds >= HOURLY_FROM else 60

    @property
    def table(self) -> str:
        return "edges_1h" if self.bucket == 3600 else "edges_1m"


# Loopback addresses are per host: they only ever match the same host.
_LOOPBACK = ("({c} BETWEEN toIPv6('::ffff:127.0.0.0') AND toIPv6('::ffff:127.255.255.255') "
             "OR {c} = toIPv6('::1'))")
_WILDCARD = "{c} IN (toIPv6('::'), toIPv6('::ffff:0.0.0.0'))"


def ip_text(col: str) -> str:
    """An address as people write it: IPv4-mapped addresses as plain IPv4."""
    return (f"if(startsWith(toString({col}), '::ffff:') AND position(toString({col}), '.') > 0, "
            f"substring(toString({col}), 8), toString({col}))")


# Hourly rows come from the stage's minutes; its live fallback keeps the caveat above.
_NO_HANDOVERS = "CAST([], 'Array(Tuple(DateTime(''UTC''), IPv6, UInt16))')"


def _handovers_sql(db: str) -> str:
    """(minute, ip, port) where a listener took over an address another owner
    had held within the slack, and did so after the minute began: the only
    minutes a per-minute rollup cannot resolve, since connections to both
    owners are summed in them. A wildcard listener's takeover is listed with
    the address ``::`` (whatever its host's addresses turn out to be)."""
    spans = (f"(SELECT if({_WILDCARD.format(c='ip')}, toIPv6('::'), ip) AS ip, port, service, host, pod, "
             f"first_seen, last_seen FROM {db}.listener_spans "
             f"WHERE hour >= toStartOfHour(toDateTime({{t0:UInt32}} - {{slack:UInt32}} - 3600, 'UTC')) "
             f"AND hour < toDateTime({{t1:UInt32}}, 'UTC'))")
    return f"""(SELECT groupUniqArray((b, ip, port)) FROM (
         SELECT toStartOfMinute(n.first_seen) AS b, n.ip AS ip, n.port AS port
         FROM {spans} AS n INNER JOIN {spans} AS o ON n.ip = o.ip AND n.port = o.port
         WHERE (n.service, n.host, n.pod) != (o.service, o.host, o.pod)
           AND o.first_seen < n.first_seen AND toStartOfMinute(n.first_seen) < n.first_seen
           AND o.last_seen + {{slack:UInt32}} >= toStartOfMinute(n.first_seen))
         WHERE b >= toDateTime({{t0:UInt32}}, 'UTC') AND b < toDateTime({{t1:UInt32}}, 'UTC'))"""


def resolved_sql(db: str, win: Window, catalog: bool = True) -> str:
    """The SQL of the instance-level resolved rows of the window (see the module docstring).

    Parameters are ``t0``, ``t1`` (UInt32 epoch seconds), ``slack`` (UInt32).
    Each row keeps its bucket (``ts``) and, for a server no listener
    explains, the port it was reached on (``d_port``). Without ``catalog``
    no address ranges are applied and no inbound record is left out for
    a virtual address's ``sources``: what no listener explains stays an
    address (kind ``internet``, the address in ``*_inst``) - the form the
    resolution stage stores, applying the catalog when it is read.
    """
    table = f"{db}.{win.table}"
    cv = version_sql(db) if catalog else "0"
    rng = "ts >= toDateTime({t0:UInt32}, 'UTC') AND ts < toDateTime({t1:UInt32}, 'UTC')"
    lo_e = _LOOPBACK.format(c="remote_ip")
    lo_a = _LOOPBACK.format(c="a")
    wild = _WILDCARD.format(c="sp.ip")
    return f"""
    WITH
      {lookups_sql(db, cv)},
      (SELECT groupUniqArray(host) FROM {db}.listener_spans
         WHERE hour >= toStartOfHour(toDateTime({{t0:UInt32}} - {{slack:UInt32}} - 3600, 'UTC'))
           AND hour < toDateTime({{t1:UInt32}}, 'UTC') AND {_WILDCARD.format(c='ip')}) AS wild_hosts,
      {_handovers_sql(db) if win.bucket == 60 else _NO_HANDOVERS} AS handovers
    SELECT
      s_kind, s_name,
      if(s_kind = 'service', if(area_of[s_name] = '', '{UNASSIGNED}', area_of[s_name]), s_area) AS s_area,
      s_dc, s_inst,
      d_kind, d_name,
      if(d_kind = 'service', if(area_of[d_name] = '', '{UNASSIGNED}', area_of[d_name]), d_area) AS d_area,
      d_dc, d_inst, d_port, ts,
      os, cn, fl, bt, hs, hu, hh, rt, ab
    FROM (
      -- clients that are traced: their outbound records, server by listener as of the bucket
      SELECT
        'service' AS s_kind, service AS s_name, '' AS s_area, dc AS s_dc,
        if(pod != '', pod, host) AS s_inst,
        -- ranges only for what no listener explained (empty arrays cost nothing)
        arrayFirst(x -> remote_ip BETWEEN x.1 AND x.2 AND (empty(x.5) OR has(x.5, remote_port)),
                   if(hit, [], dst_ranges)) AS sr,
        arrayFirst(x -> remote_ip BETWEEN x.1 AND x.2 AND (empty(x.5) OR has(x.5, remote_port)),
                   if(hit OR sr.3 != '', [], ext_ranges)) AS xr,
        multiIf(hit, 'service', sr.3 != '', 'service', xr.3 != '', 'external', 'internet') AS d_kind,
        multiIf(hit, l_service, sr.3 != '', sr.3, xr.3 != '', xr.3, '{INTERNET}') AS d_name,
        multiIf(hit OR sr.3 != '', '', xr.3 != '', xr.4, '{INTERNET}') AS d_area,
        if(hit, l_dc, '') AS d_dc,
        if(hit, if(l_pod != '', l_pod, l_host), {ip_text('remote_ip')}) AS d_inst,
        if(hit, toUInt16(0), remote_port) AS d_port, ts,
        os, cn, fl, bt, hs, hu, hh, rt, ab
      FROM (
        SELECT e.ts AS ts, e.dc AS dc, e.host AS host, e.service AS service, e.pod AS pod,
               e.remote_ip AS remote_ip, e.remote_port AS remote_port,
               s.found = 1 AND e.ts <= s.last_seen + {{slack:UInt32}} AS hit,
               if(hit, s.service, '') AS l_service, if(hit, s.host, '') AS l_host,
               if(hit, s.pod, '') AS l_pod, if(hit, s.dc, '') AS l_dc,
               e.os AS os, e.cn AS cn, e.fl AS fl, e.bt AS bt,
               e.hs AS hs, e.hu AS hu, e.hh AS hh, e.rt AS rt, e.ab AS ab
        FROM (
          -- rows as stored: the sums below also fold rows the rollup has not merged yet
          SELECT ts, ts + {win.bucket - 1} AS t_end, dc, host, service, pod, remote_ip, remote_port,
                 if({lo_e}, host, '') AS kh,
                 open_seconds AS os, connects AS cn, failures AS fl, bytes_sent + bytes_received AS bt,
                 handshakes AS hs, handshake_us_sum AS hu,
                 arrayMap(x -> toInt64(x), finalizeAggregation(handshake_hist)) AS hh,
                 retransmits AS rt, aborts AS ab
          FROM {table}
          WHERE direction = 'outbound' AND {rng}
            AND NOT (has(handovers, (ts, remote_ip, remote_port)) OR has(handovers, (ts, toIPv6('::'), remote_port)))
          UNION ALL
          -- a minute in which an address changed hands: its raw records, each
          -- resolved as of its own interval rather than the minute's end
          SELECT toStartOfMinute(at) AS ts, at AS t_end, dc, host, service, pod, remote_ip, remote_port,
                 if({lo_e}, host, '') AS kh,
                 toUInt64(open) * interval_s AS os, connects AS cn, failures AS fl, bytes_sent + bytes_received AS bt,
                 handshakes AS hs, handshake_us_sum AS hu, arrayMap(x -> toInt64(x), handshake_hist) AS hh,
                 retransmits AS rt, aborts AS ab
          FROM (
            SELECT ts AS at, dc, host, service, pod, remote_ip, remote_port, open, interval_s, connects,
                   failures, bytes_sent, bytes_received, handshakes, handshake_us_sum, handshake_hist,
                   retransmits, aborts
            FROM {db}.connections
            WHERE notEmpty(handovers) AND direction = 'outbound' AND {rng}
              AND (has(handovers, (toStartOfMinute(ts), remote_ip, remote_port))
                   OR has(handovers, (toStartOfMinute(ts), toIPv6('::'), remote_port))))
        ) AS e
        ASOF LEFT JOIN (
          SELECT a AS ip, port, if({lo_a}, host, '') AS kh, host, service, pod, dc,
                 first_seen, last_seen, 1 AS found
          FROM (
            SELECT sp.ip AS ip, sp.port AS port, sp.host AS host, sp.service AS service,
                   sp.pod AS pod, sp.dc AS dc, sp.first_seen AS first_seen, sp.last_seen AS last_seen,
                   if({wild}, w.addrs, [sp.ip]) AS cand
            FROM (
              -- spans as stored, unmerged parts included: each covers its own
              -- stretch of time, which is all the ASOF join needs
              SELECT ip, port, host, service, pod, dc, first_seen, last_seen
              FROM {db}.listener_spans
              WHERE hour >= toStartOfHour(toDateTime({{t0:UInt32}} - {{slack:UInt32}} - 3600, 'UTC'))
                AND hour < toDateTime({{t1:UInt32}}, 'UTC')
            ) AS sp
            LEFT JOIN (
              -- where a wildcard listener can be reached: the addresses its host
              -- (or pod) accepted on, looked up only for hosts that have one
              SELECT host, pod, groupUniqArray(a) AS addrs FROM (
                SELECT host, pod, local_ip AS a FROM {table}
                WHERE direction = 'inbound' AND {rng} AND has(wild_hosts, host)
                UNION ALL
                SELECT host, '' AS pod, host_ip AS a FROM {table} WHERE {rng} AND has(wild_hosts, host)
              ) GROUP BY host, pod
            ) AS w ON w.host = sp.host AND w.pod = sp.pod
          )
          ARRAY JOIN cand AS a
        ) AS s
        ON e.remote_ip = s.ip AND e.remote_port = s.port AND e.kh = s.kh AND e.t_end >= s.first_seen
      )

      UNION ALL

      -- clients that are not traced: the server's inbound records
      SELECT
        multiIf(sr.3 != '', 'service', xr.3 != '', 'external', 'internet') AS s_kind,
        multiIf(sr.3 != '', sr.3, xr.3 != '', xr.3, '{INTERNET}') AS s_name,
        multiIf(sr.3 != '', '', xr.3 != '', xr.4, '{INTERNET}') AS s_area,
        '' AS s_dc, {ip_text('remote_ip')} AS s_inst,
        arrayFirst(x -> remote_ip BETWEEN x.1 AND x.2, svc_ranges) AS sr,
        arrayFirst(x -> remote_ip BETWEEN x.1 AND x.2, if(sr.3 != '', [], ext_ranges)) AS xr,
        'service' AS d_kind, service AS d_name, '' AS d_area, dc AS d_dc,
        if(pod != '', pod, host) AS d_inst, toUInt16(0) AS d_port, ts,
        os, cn, fl, bt, hs, hu, hh, rt, ab
      FROM (
        SELECT ts, dc, host, service, pod, remote_ip,
               sum(open_seconds) AS os, sum(accepts) AS cn, toUInt64(0) AS fl,
               sum(bytes_sent + bytes_received) AS bt,
               sum(handshakes) AS hs, sum(handshake_us_sum) AS hu,
               arrayMap(x -> toInt64(x), sumForEachMerge(handshake_hist)) AS hh,
               sum(retransmits) AS rt, sum(aborts) AS ab
        FROM {table}
        WHERE direction = 'inbound' AND {rng}
          -- through a virtual address with sources: the traced clients reported these
          AND NOT arrayExists(x -> remote_ip BETWEEN x.1 AND x.2 AND x.3 = service, vip_sources)
          -- per bucket, so that a minute resolves the same in any window
          AND (ts, remote_ip) NOT IN (
            SELECT ts, local_ip FROM {table} WHERE direction = 'outbound' AND {rng}
            UNION ALL
            SELECT ts, host_ip FROM {table} WHERE {rng})
        GROUP BY ts, dc, host, service, pod, remote_ip
      )
    )
    """
