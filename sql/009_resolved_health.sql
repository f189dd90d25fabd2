-- Health per edge in the resolved tables (003_resolved.sql): the figures of
-- 008_health.sql, carried from the endpoint rows to client -> server rows
-- by the resolution stage (api/resolution/stage.py). Signed like the other
-- value columns, so a minute resolved again withdraws them with the rest;
-- the histogram is a sumForEach state of signed counts (read it with
-- sumForEachMerge(handshake_hist); tracer/records.py handshake_bounds gives
-- its buckets).
ALTER TABLE $db.resolved_1m ADD COLUMN IF NOT EXISTS handshakes Int64 DEFAULT 0;
ALTER TABLE $db.resolved_1m ADD COLUMN IF NOT EXISTS handshake_us_sum Int64 DEFAULT 0;
ALTER TABLE $db.resolved_1m ADD COLUMN IF NOT EXISTS handshake_hist AggregateFunction(sumForEach, Array(Int64));
ALTER TABLE $db.resolved_1m ADD COLUMN IF NOT EXISTS retransmits Int64 DEFAULT 0;
ALTER TABLE $db.resolved_1m ADD COLUMN IF NOT EXISTS aborts Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1m ADD COLUMN IF NOT EXISTS handshakes Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1m ADD COLUMN IF NOT EXISTS handshake_us_sum Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1m ADD COLUMN IF NOT EXISTS handshake_hist AggregateFunction(sumForEach, Array(Int64));
ALTER TABLE $db.resolved_svc_1m ADD COLUMN IF NOT EXISTS retransmits Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1m ADD COLUMN IF NOT EXISTS aborts Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1h ADD COLUMN IF NOT EXISTS handshakes Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1h ADD COLUMN IF NOT EXISTS handshake_us_sum Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1h ADD COLUMN IF NOT EXISTS handshake_hist AggregateFunction(sumForEach, Array(Int64));
ALTER TABLE $db.resolved_svc_1h ADD COLUMN IF NOT EXISTS retransmits Int64 DEFAULT 0;
ALTER TABLE $db.resolved_svc_1h ADD COLUMN IF NOT EXISTS aborts Int64 DEFAULT 0;

-- As in 008_health.sql, the rollups' views of 003 stay as they are and a
-- second view per rollup writes the health columns, in rows of their own
-- (n and the counters 0) that the readers' sums fold into the same key.
-- Only rows that carry something of health give such a row.
CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_svc_1m_health_mv TO $db.resolved_svc_1m AS
SELECT ts, s_kind, s_name, s_dc, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, d_dc, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(r.handshakes) AS handshakes, sum(r.handshake_us_sum) AS handshake_us_sum,
       sumForEachMergeState(r.handshake_hist) AS handshake_hist,
       sum(r.retransmits) AS retransmits, sum(r.aborts) AS aborts
FROM $db.resolved_1m AS r
WHERE r.handshakes != 0 OR r.retransmits != 0 OR r.aborts != 0
GROUP BY ts, s_kind, s_name, s_dc, s_addr, d_kind, d_name, d_dc, d_addr, d_port;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.resolved_svc_1h_health_mv TO $db.resolved_svc_1h AS
SELECT toStartOfHour(ts) AS ts, s_kind, s_name, s_dc, if(s_kind = 'addr', s_inst, '') AS s_addr,
       d_kind, d_name, d_dc, if(d_kind = 'addr', d_inst, '') AS d_addr, if(d_kind = 'addr', d_port, 0) AS d_port,
       sum(r.handshakes) AS handshakes, sum(r.handshake_us_sum) AS handshake_us_sum,
       sumForEachMergeState(r.handshake_hist) AS handshake_hist,
       sum(r.retransmits) AS retransmits, sum(r.aborts) AS aborts
FROM $db.resolved_1m AS r
WHERE r.handshakes != 0 OR r.retransmits != 0 OR r.aborts != 0
GROUP BY ts, s_kind, s_name, s_dc, s_addr, d_kind, d_name, d_dc, d_addr, d_port;
