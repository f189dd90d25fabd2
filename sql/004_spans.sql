-- Trace spans (Zipkin v2, e.g. from the OpenTelemetry SDK), kept for a few
-- hours: long enough for a parent and its child, posted by different
-- services minutes apart, to meet in the resolution stage (api/zipkin.py
-- links them; api/resolution.py runs it as minutes close). The TTL is
-- PHOBOS_SPAN_TTL_HOURS (phobos migrate --span-ttl-hours); TTL deletes
-- happen in merges, so spans may outlive it by a few hours.
CREATE TABLE IF NOT EXISTS $db.spans
(
    trace_id        String,
    span_id         String,
    parent_id       String,
    kind            LowCardinality(String),
    local_service   LowCardinality(String),
    remote_service  LowCardinality(String),
    start_us        UInt64,
    duration_us     UInt64,
    error           UInt8,
    ts              DateTime('UTC') MATERIALIZED toDateTime(intDiv(start_us, 1000000), 'UTC'),
    INDEX ts_range ts TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (trace_id, span_id)
TTL ts + INTERVAL $span_ttl_hours HOUR
SETTINGS non_replicated_deduplication_window = 10000;

-- Spans per minute of their start, and the last minute a span of that minute
-- still runs in (where its children can start): the stage links a minute
-- again when it gets spans, together with the minutes its spans reach.
CREATE TABLE IF NOT EXISTS $db.span_marks
(
    ts      DateTime('UTC'),
    spans   UInt64,
    reach   DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY ts
TTL ts + INTERVAL 2 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.span_marks_mv TO $db.span_marks AS
SELECT toStartOfMinute(toDateTime(intDiv(start_us, 1000000), 'UTC')) AS ts, count() AS spans,
       max(toStartOfMinute(toDateTime(intDiv(start_us + duration_us, 1000000), 'UTC'))) AS reach
FROM $db.spans GROUP BY ts;

-- Calls between services per minute, as the stage linked them from spans
-- (the minute of the span that answered the call: the server's, or the
-- client's when no server span was seen). Signed like resolved_1m: a minute
-- linked again withdraws what it wrote before in the same insert.
CREATE TABLE IF NOT EXISTS $db.resolved_calls_1m
(
    ts              DateTime('UTC'),
    caller          LowCardinality(String),
    callee          LowCardinality(String),
    n               Int64,
    calls           Int64,
    errors          Int64,
    duration_us     Int64
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (ts, caller, callee)
TTL ts + INTERVAL $ttl_days DAY;

CREATE TABLE IF NOT EXISTS $db.resolved_calls_1h
(
    ts              DateTime('UTC'),
    caller          LowCardinality(String),
    callee          LowCardinality(String),
    n               Int64,
    calls           Int64,
    errors          Int64,
    duration_us     Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, caller, callee)
TTL ts + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_calls_1h_mv TO $db.resolved_calls_1h AS
SELECT toStartOfHour(ts) AS ts, caller, callee, sum(n) AS n, sum(calls) AS calls, sum(errors) AS errors,
       sum(duration_us) AS duration_us
FROM $db.resolved_calls_1m GROUP BY ts, caller, callee;

-- What the stage linked each minute from (the spans span_marks had counted);
-- the row of the highest generation wins. Minutes whose calls came from
-- trace_edges (stores written before spans were kept) have spans = 0.
CREATE TABLE IF NOT EXISTS $db.resolved_call_minutes
(
    ts              DateTime('UTC'),
    spans           UInt64,
    generation      UInt64,
    resolved_at     DateTime('UTC')
)
ENGINE = ReplacingMergeTree(generation)
ORDER BY ts
TTL ts + INTERVAL $ttl_days DAY;
