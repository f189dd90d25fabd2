-- Resolved edges: client -> server per minute, as the resolution stage
-- (api/resolution.py) makes them from edges_1m and listener_spans once a
-- minute has settled. Views read these instead of resolving per request.
--
-- A minute is resolved again whenever rows reach it late. Rather than
-- deleting, the stage inserts in one block the negation of what it wrote
-- for that minute before together with the new rows: value columns are
-- signed, SummingMergeTree adds them up and drops rows that sum to zero,
-- and every reader sums anyway. So a reader never sees a minute half
-- replaced, and the rollups below, fed by views, follow without a rebuild.
--
-- What no listener explains is kept as an address (kind 'addr', the
-- address in *_inst, the port in d_port); catalog ranges, externals and
-- areas are applied when the rows are read, so a catalog change shows at
-- once without resolving anything again.
CREATE TABLE IF NOT EXISTS $db.resolved_1m
(
    ts              DateTime('UTC'),
    s_kind          Enum8('service' = 1, 'addr' = 2),
    s_name          LowCardinality(String),
    s_dc            LowCardinality(String),
    s_inst          String,
    d_kind          Enum8('service' = 1, 'addr' = 2),
    d_name          LowCardinality(String),
    d_dc            LowCardinality(String),
    d_inst          String,
    d_port          UInt16,
    -- +1 for a row the stage wrote, -1 for one it withdrew
    n               Int64,
    open_seconds    Int64,
    connects        Int64,
    failures        Int64,
    bytes           Int64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (ts, s_name, d_name, s_kind, d_kind, s_dc, d_dc, s_inst, d_inst, d_port)
TTL ts + INTERVAL $ttl_days DAY;

-- Service level: instances folded away, addresses kept (their catalog
-- lookup happens at read time).
CREATE TABLE IF NOT EXISTS $db.resolved_svc_1m
(
    ts              DateTime('UTC'),
    s_kind          Enum8('service' = 1, 'addr' = 2),
    s_name          LowCardinality(String),
    s_dc            LowCardinality(String),
    s_addr          String,
    d_kind          Enum8('service' = 1, 'addr' = 2),
    d_name          LowCardinality(String),
    d_dc            LowCardinality(String),
    d_addr          String,
    d_port          UInt16,
    n               Int64,
    open_seconds    Int64,
    connects        Int64,
    failures        Int64,
    bytes           Int64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (ts, s_name, d_name, s_kind, d_kind, s_dc, d_dc, s_addr, d_addr, d_port)
TTL ts + INTERVAL $ttl_days DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_svc_1m_mv TO $db.resolved_svc_1m AS
SELECT ts, s_kind, s_name, s_dc, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, d_dc, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(n) AS n, sum(open_seconds) AS open_seconds, sum(connects) AS connects,
       sum(failures) AS failures, sum(bytes) AS bytes
FROM $db.resolved_1m
GROUP BY ts, s_kind, s_name, s_dc, s_addr, d_kind, d_name, d_dc, d_addr, d_port;

CREATE TABLE IF NOT EXISTS $db.resolved_svc_1h
(
    ts              DateTime('UTC'),
    s_kind          Enum8('service' = 1, 'addr' = 2),
    s_name          LowCardinality(String),
    s_dc            LowCardinality(String),
    s_addr          String,
    d_kind          Enum8('service' = 1, 'addr' = 2),
    d_name          LowCardinality(String),
    d_dc            LowCardinality(String),
    d_addr          String,
    d_port          UInt16,
    n               Int64,
    open_seconds    Int64,
    connects        Int64,
    failures        Int64,
    bytes           Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, s_name, d_name, s_kind, d_kind, s_dc, d_dc, s_addr, d_addr, d_port)
TTL ts + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_svc_1h_mv TO $db.resolved_svc_1h AS
SELECT toStartOfHour(ts) AS ts, s_kind, s_name, s_dc, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, d_dc, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(n) AS n, sum(open_seconds) AS open_seconds, sum(connects) AS connects,
       sum(failures) AS failures, sum(bytes) AS bytes
FROM $db.resolved_1m
GROUP BY ts, s_kind, s_name, s_dc, s_addr, d_kind, d_name, d_dc, d_addr, d_port;

-- How many raw records each minute has received, from every ingest path
-- (the views below see every insert; a replayed batch is dropped by the
-- same deduplication token as its rows). The stage compares these counts
-- with what it last resolved to find minutes that got rows late.
CREATE TABLE IF NOT EXISTS $db.minute_marks
(
    ts                DateTime('UTC'),
    records           UInt64,
    listener_records  UInt64
)
ENGINE = SummingMergeTree
ORDER BY ts
TTL ts + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- What the stage resolved each minute from (the edges_1m records it read
-- and the listener records minute_marks had counted); the row of the
-- highest generation (nanoseconds at resolution) of a minute wins.
CREATE TABLE IF NOT EXISTS $db.resolved_minutes
(
    ts                DateTime('UTC'),
    records           UInt64,
    listener_records  UInt64,
    generation        UInt64,
    resolved_at       DateTime('UTC')
)
ENGINE = ReplacingMergeTree(generation)
ORDER BY ts
TTL ts + INTERVAL $ttl_days DAY;

-- Server mode: which resolution stage runs the rounds (api/resolution.py).
CREATE TABLE IF NOT EXISTS $db.resolver_lease
(
    holder      String,
    taken_ms    UInt64,
    expires_ms  UInt64,
    ts          DateTime('UTC') MATERIALIZED toDateTime(intDiv(taken_ms, 1000), 'UTC')
)
ENGINE = MergeTree
ORDER BY (holder, taken_ms)
TTL ts + INTERVAL 1 DAY;

-- Records stored before these views existed are counted by the resolution
-- stage on its first round (Resolver.seed_marks).
CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_marks_connections_mv TO $db.minute_marks AS
SELECT toStartOfMinute(ts) AS ts, count() AS records, toUInt64(0) AS listener_records
FROM $db.connections GROUP BY ts;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_marks_listeners_mv TO $db.minute_marks AS
SELECT toStartOfMinute(ts) AS ts, toUInt64(0) AS records, count() AS listener_records
FROM $db.listeners GROUP BY ts;
