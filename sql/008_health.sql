-- Health per edge (tracer/bpf/phobos.c): handshake latency of connects
-- (count, sum in microseconds, and a histogram whose buckets
-- tracer/records.py describes: handshake_bounds), segments retransmitted
-- and connections aborted (closed by a reset or a timeout). Records of
-- tracers older than these columns hold the defaults (0, []). Columns of
-- the record contract (tracer/records.py).
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS handshakes UInt32 DEFAULT 0;
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS handshake_us_sum UInt64 DEFAULT 0;
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS handshake_hist Array(UInt32) DEFAULT [];
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS retransmits UInt64 DEFAULT 0;
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS aborts UInt32 DEFAULT 0;

-- The rollups take the same figures. A SummingMergeTree sums the numbers;
-- the histogram is an aggregate state that merges bucket by bucket: read it
-- with sumForEachMerge(handshake_hist) (an array of HANDSHAKE_BUCKETS
-- counts; empty where no handshake was timed), e.g.
--   SELECT service, sum(handshakes), sumForEachMerge(handshake_hist)
--   FROM phobos.edges_1m WHERE ts >= now() - 3600 GROUP BY service
-- The views of 001_core.sql stay as they are: a second view on
-- connections writes the health columns into each rollup, in rows of their
-- own (the counters of those rows are 0) that merges fold into the same
-- key. Only records that carry something of health give such a row.
ALTER TABLE $db.edges_1m ADD COLUMN IF NOT EXISTS handshakes UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1m ADD COLUMN IF NOT EXISTS handshake_us_sum UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1m ADD COLUMN IF NOT EXISTS handshake_hist AggregateFunction(sumForEach, Array(UInt32));
ALTER TABLE $db.edges_1m ADD COLUMN IF NOT EXISTS retransmits UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1m ADD COLUMN IF NOT EXISTS aborts UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1h ADD COLUMN IF NOT EXISTS handshakes UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1h ADD COLUMN IF NOT EXISTS handshake_us_sum UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1h ADD COLUMN IF NOT EXISTS handshake_hist AggregateFunction(sumForEach, Array(UInt32));
ALTER TABLE $db.edges_1h ADD COLUMN IF NOT EXISTS retransmits UInt64 DEFAULT 0;
ALTER TABLE $db.edges_1h ADD COLUMN IF NOT EXISTS aborts UInt64 DEFAULT 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.edges_1m_health_mv TO $db.edges_1m AS
SELECT
    toStartOfMinute(c.ts) AS ts, dc, host, host_ip, service, pod, direction,
    local_ip, local_port, remote_ip, remote_port,
    sum(c.handshakes) AS handshakes, sum(c.handshake_us_sum) AS handshake_us_sum,
    sumForEachState(c.handshake_hist) AS handshake_hist,
    sum(c.retransmits) AS retransmits, sum(c.aborts) AS aborts
FROM $db.connections AS c
WHERE c.handshakes > 0 OR c.retransmits > 0 OR c.aborts > 0
GROUP BY ts, dc, host, host_ip, service, pod, direction, local_ip, local_port, remote_ip, remote_port;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.edges_1h_health_mv TO $db.edges_1h AS
SELECT
    toStartOfHour(c.ts) AS ts, dc, host, host_ip, service, pod, direction,
    local_ip, local_port, remote_ip, remote_port,
    sum(c.handshakes) AS handshakes, sum(c.handshake_us_sum) AS handshake_us_sum,
    sumForEachState(c.handshake_hist) AS handshake_hist,
    sum(c.retransmits) AS retransmits, sum(c.aborts) AS aborts
FROM $db.connections AS c
WHERE c.handshakes > 0 OR c.retransmits > 0 OR c.aborts > 0
GROUP BY ts, dc, host, host_ip, service, pod, direction, local_ip, local_port, remote_ip, remote_port;
