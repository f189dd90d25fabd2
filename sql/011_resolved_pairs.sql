-- Service pairs without datacenters: resolved_svc_1m/_1h (003, 009) keep
-- each end's datacenter for the datacenter view and the dc filter, which
-- splits a pair of services into every pair of their datacenters (2.5 rows
-- for each here, three zones). The views without a dc read these instead:
-- the areas, an area, impact, a service's dependencies, diff. Same columns
-- less the datacenters, signed and withdrawn with the rest, fed from
-- resolved_1m by one view each.
CREATE TABLE IF NOT EXISTS $db.resolved_pairs_1m
(
    ts                DateTime('UTC'),
    s_kind            Enum8('service' = 1, 'addr' = 2),
    s_name            LowCardinality(String),
    s_addr            String,
    d_kind            Enum8('service' = 1, 'addr' = 2),
    d_name            LowCardinality(String),
    d_addr            String,
    d_port            UInt16,
    n                 Int64,
    open_seconds      Int64,
    connects          Int64,
    failures          Int64,
    bytes             Int64,
    handshakes        Int64,
    handshake_us_sum  Int64,
    handshake_hist    AggregateFunction(sumForEach, Array(Int64)),
    retransmits       Int64,
    aborts            Int64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (ts, s_name, d_name, s_kind, d_kind, s_addr, d_addr, d_port)
TTL ts + INTERVAL $ttl_days DAY;

CREATE TABLE IF NOT EXISTS $db.resolved_pairs_1h
(
    ts                DateTime('UTC'),
    s_kind            Enum8('service' = 1, 'addr' = 2),
    s_name            LowCardinality(String),
    s_addr            String,
    d_kind            Enum8('service' = 1, 'addr' = 2),
    d_name            LowCardinality(String),
    d_addr            String,
    d_port            UInt16,
    n                 Int64,
    open_seconds      Int64,
    connects          Int64,
    failures          Int64,
    bytes             Int64,
    handshakes        Int64,
    handshake_us_sum  Int64,
    handshake_hist    AggregateFunction(sumForEach, Array(Int64)),
    retransmits       Int64,
    aborts            Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, s_name, d_name, s_kind, d_kind, s_addr, d_addr, d_port)
TTL ts + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_pairs_1m_mv TO $db.resolved_pairs_1m AS
SELECT ts, s_kind, s_name, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(n) AS n, sum(open_seconds) AS open_seconds, sum(connects) AS connects,
       sum(failures) AS failures, sum(bytes) AS bytes,
       sum(r.handshakes) AS handshakes, sum(r.handshake_us_sum) AS handshake_us_sum,
       sumForEachMergeState(r.handshake_hist) AS handshake_hist,
       sum(r.retransmits) AS retransmits, sum(r.aborts) AS aborts
FROM $db.resolved_1m AS r
GROUP BY ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_pairs_1h_mv TO $db.resolved_pairs_1h AS
SELECT toStartOfHour(ts) AS ts, s_kind, s_name, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(n) AS n, sum(open_seconds) AS open_seconds, sum(connects) AS connects,
       sum(failures) AS failures, sum(bytes) AS bytes,
       sum(r.handshakes) AS handshakes, sum(r.handshake_us_sum) AS handshake_us_sum,
       sumForEachMergeState(r.handshake_hist) AS handshake_hist,
       sum(r.retransmits) AS retransmits, sum(r.aborts) AS aborts
FROM $db.resolved_1m AS r
GROUP BY ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port;

-- Stores resolved before these tables existed: the same from the service
-- rollups. Run while no resolution stage writes (phobos migrate before the
-- stage starts, as phobos serve and the chart's migration job do): a minute
-- resolved again meanwhile would reach these tables twice.
INSERT INTO $db.resolved_pairs_1m
SELECT ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port,
       sum(n), sum(open_seconds), sum(connects), sum(failures), sum(bytes),
       sum(handshakes), sum(handshake_us_sum), sumForEachMergeState(handshake_hist), sum(retransmits), sum(aborts)
FROM $db.resolved_svc_1m
GROUP BY ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port;

INSERT INTO $db.resolved_pairs_1h
SELECT ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port,
       sum(n), sum(open_seconds), sum(connects), sum(failures), sum(bytes),
       sum(handshakes), sum(handshake_us_sum), sumForEachMergeState(handshake_hist), sum(retransmits), sum(aborts)
FROM $db.resolved_svc_1h
GROUP BY ts, s_kind, s_name, s_addr, d_kind, d_name, d_addr, d_port;
