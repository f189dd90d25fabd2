-- Phobos core schema: works on every ClickHouse (server or embedded chDB).
--
-- Placeholders: $db (database), $ttl_days (retention of raw records).
-- Applied by `phobos migrate`; each file runs once and is recorded in
-- $db.schema_migrations, so statements here only need to be correct on an
-- empty database, but they are still written IF NOT EXISTS so that a
-- half-applied file (crash mid-way) can simply be run again.
--
-- At-least-once delivery: every writer passes an insert_deduplication_token
-- per batch (tracer batch id, Kafka partition/offset range, simulator chunk).
-- The raw tables and every rollup keep a deduplication window, so a replayed
-- batch is dropped by the raw table and by each materialized view's target
-- alike: users never see doubled numbers.

CREATE DATABASE IF NOT EXISTS $db;

CREATE TABLE IF NOT EXISTS $db.schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_at  DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
ORDER BY version;

-- Raw connection records, one per (host, netns, pid, direction, endpoints)
-- and interval. Columns are the record contract (tracer/records.py).
CREATE TABLE IF NOT EXISTS $db.connections
(
    v               UInt8,
    ts              DateTime('UTC'),
    interval_s      UInt32,
    dc              LowCardinality(String),
    host            LowCardinality(String),
    host_ip         IPv6,
    netns           UInt32,
    pid             UInt32,
    comm            LowCardinality(String),
    service         LowCardinality(String),
    container_id    String,
    pod             String,
    namespace       LowCardinality(String),
    direction       Enum8('outbound' = 1, 'inbound' = 2),
    local_ip        IPv6,
    local_port      UInt16,
    remote_ip       IPv6,
    remote_port     UInt16,
    connects        UInt32,
    accepts         UInt32,
    closes          UInt32,
    failures        UInt32,
    open            UInt32,
    duration_ms_sum UInt64,
    bytes_sent      UInt64,
    bytes_received  UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (direction, service, host, ts)
TTL ts + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS $db.listeners
(
    v             UInt8,
    ts            DateTime('UTC'),
    dc            LowCardinality(String),
    host          LowCardinality(String),
    ip            IPv6,
    port          UInt16,
    pid           UInt32,
    comm          LowCardinality(String),
    service       LowCardinality(String),
    container_id  String,
    pod           String,
    namespace     LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (ip, port, ts)
TTL ts + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Who listened on ip:port and when: first/last report per hour. Resolving a
-- client's remote endpoint "as of T" reads this instead of raw listeners, and
-- an IP reused by another service after a deploy shows up as two disjoint
-- spans instead of one false edge.
CREATE TABLE IF NOT EXISTS $db.listener_spans
(
    hour        DateTime('UTC'),
    ip          IPv6,
    port        UInt16,
    dc          LowCardinality(String),
    host        LowCardinality(String),
    service     LowCardinality(String),
    pod         String,
    first_seen  SimpleAggregateFunction(min, DateTime('UTC')),
    last_seen   SimpleAggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (ip, port, hour, host, service, pod, dc)
TTL hour + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.listener_spans_mv TO $db.listener_spans AS
SELECT
    toStartOfHour(ts) AS hour, ip, port, dc, host, service, pod,
    min(ts) AS first_seen, max(ts) AS last_seen
FROM $db.listeners
GROUP BY hour, ip, port, dc, host, service, pod;

-- Records refused by the contract (and, with Kafka, unreadable messages):
-- kept with the reason so that nothing disappears silently.
CREATE TABLE IF NOT EXISTS $db.dead_letters
(
    received_at  DateTime('UTC'),
    source       LowCardinality(String),
    kind         LowCardinality(String),
    reason       String,
    raw          String
)
ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY received_at
TTL received_at + INTERVAL $ttl_days DAY;

-- Endpoint-level rollups. The remote side stays an ip:port because which
-- service owned it is only known at query time (listeners as of T).
-- `open` is a gauge: store connection-seconds (open x interval) so that
-- sum(open_seconds) / bucket_seconds is the time-averaged number of open
-- connections whatever the tracer interval and however many processes.
CREATE TABLE IF NOT EXISTS $db.edges_1m
(
    ts              DateTime('UTC'),
    dc              LowCardinality(String),
    host            LowCardinality(String),
    host_ip         IPv6,
    service         LowCardinality(String),
    pod             String,
    direction       Enum8('outbound' = 1, 'inbound' = 2),
    local_ip        IPv6,
    local_port      UInt16,
    remote_ip       IPv6,
    remote_port     UInt16,
    records         UInt64,
    connects        UInt64,
    accepts         UInt64,
    closes          UInt64,
    failures        UInt64,
    open_seconds    UInt64,
    duration_ms_sum UInt64,
    bytes_sent      UInt64,
    bytes_received  UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (direction, service, ts, dc, host, host_ip, pod, local_ip, local_port, remote_ip, remote_port)
TTL ts + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.edges_1m_mv TO $db.edges_1m AS
SELECT
    toStartOfMinute(ts) AS ts, dc, host, host_ip, service, pod, direction,
    local_ip, local_port, remote_ip, remote_port,
    count() AS records,
    sum(connects) AS connects, sum(accepts) AS accepts, sum(closes) AS closes,
    sum(failures) AS failures,
    sum(toUInt64(open) * interval_s) AS open_seconds,
    sum(duration_ms_sum) AS duration_ms_sum,
    sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received
FROM $db.connections
GROUP BY ts, dc, host, host_ip, service, pod, direction, local_ip, local_port, remote_ip, remote_port;

-- Hourly rollup for long ranges: kept 13 months by default (yearly
-- comparisons), fed from the raw records like edges_1m so that a replayed
-- batch is deduplicated by the same token in both.
CREATE TABLE IF NOT EXISTS $db.edges_1h
(
    ts              DateTime('UTC'),
    dc              LowCardinality(String),
    host            LowCardinality(String),
    host_ip         IPv6,
    service         LowCardinality(String),
    pod             String,
    direction       Enum8('outbound' = 1, 'inbound' = 2),
    local_ip        IPv6,
    local_port      UInt16,
    remote_ip       IPv6,
    remote_port     UInt16,
    records         UInt64,
    connects        UInt64,
    accepts         UInt64,
    closes          UInt64,
    failures        UInt64,
    open_seconds    UInt64,
    duration_ms_sum UInt64,
    bytes_sent      UInt64,
    bytes_received  UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (direction, service, ts, dc, host, host_ip, pod, local_ip, local_port, remote_ip, remote_port)
TTL ts + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.edges_1h_mv TO $db.edges_1h AS
SELECT
    toStartOfHour(ts) AS ts, dc, host, host_ip, service, pod, direction,
    local_ip, local_port, remote_ip, remote_port,
    count() AS records,
    sum(connects) AS connects, sum(accepts) AS accepts, sum(closes) AS closes,
    sum(failures) AS failures,
    sum(toUInt64(open) * interval_s) AS open_seconds,
    sum(duration_ms_sum) AS duration_ms_sum,
    sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received
FROM $db.connections
GROUP BY ts, dc, host, host_ip, service, pod, direction, local_ip, local_port, remote_ip, remote_port;

-- Catalog: every load writes a complete new version, then one row in
-- catalog_loads makes it current. Readers use max(version) of catalog_loads,
-- so a load that fails half-way is never seen.
CREATE TABLE IF NOT EXISTS $db.catalog_loads
(
    version     UInt64,
    loaded_at   DateTime('UTC'),
    source      String,
    checksum    String,
    areas       UInt32,
    services    UInt32,
    externals   UInt32
)
ENGINE = MergeTree
ORDER BY version;

CREATE TABLE IF NOT EXISTS $db.catalog_areas
(
    version      UInt64,
    name         String,
    title        String,
    kind         LowCardinality(String),
    owner        String,
    description  String,
    services     Array(String),
    links        String
)
ENGINE = MergeTree
ORDER BY (version, name);

CREATE TABLE IF NOT EXISTS $db.catalog_services
(
    version      UInt64,
    name         String,
    area         String,
    title        String,
    owner        String,
    tier         UInt8,
    description  String,
    match        String,
    cidrs        Array(String),
    ports        Array(UInt16),
    links        String
)
ENGINE = MergeTree
ORDER BY (version, name);

CREATE TABLE IF NOT EXISTS $db.catalog_externals
(
    version      UInt64,
    name         String,
    area         String,
    description  String,
    cidrs        Array(String),
    hostnames    Array(String),
    ports        Array(UInt16)
)
ENGINE = MergeTree
ORDER BY (version, name);

-- Alerts from Alertmanager's webhook. One row per notification; the latest
-- row per fingerprint and start time says whether it is still firing.
CREATE TABLE IF NOT EXISTS $db.alerts
(
    received_at  DateTime('UTC'),
    fingerprint  String,
    status       Enum8('firing' = 1, 'resolved' = 2),
    alertname    LowCardinality(String),
    service      LowCardinality(String),
    severity     LowCardinality(String),
    starts_at    DateTime('UTC'),
    ends_at      DateTime('UTC'),
    summary      String,
    labels       Map(String, String),
    annotations  Map(String, String)
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (fingerprint, starts_at);

-- Service-to-service calls seen by distributed tracing (Zipkin v2 spans),
-- per minute: confirms or adds edges that TCP alone cannot name.
CREATE TABLE IF NOT EXISTS $db.trace_edges
(
    ts               DateTime('UTC'),
    parent_service   LowCardinality(String),
    child_service    LowCardinality(String),
    calls            UInt64,
    errors           UInt64,
    duration_us_sum  UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (parent_service, child_service, ts)
TTL ts + INTERVAL $ttl_days DAY
SETTINGS non_replicated_deduplication_window = 10000;
