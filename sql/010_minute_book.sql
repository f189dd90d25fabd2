-- Where the resolution stage's rows end, for the views, in one small table:
-- per minute and kind, whether the minute holds records (tcp) or spans
-- (calls), and whether the stage has resolved or linked it at least once.
-- Every view reads it before it reads resolved rows (api/views/reads.py
-- window_state); four tables read there cost about three times as much as
-- this one. It is fed by views of the stage's own bookkeeping
-- (minute_marks, resolved_minutes, span_marks, resolved_call_minutes;
-- 003_resolved.sql, 004_spans.sql), which the stage keeps using for its
-- counts. Both flags are maxima: a replayed or repeated row changes nothing.
CREATE TABLE IF NOT EXISTS $db.minute_book
(
    kind    Enum8('tcp' = 1, 'calls' = 2),
    ts      DateTime('UTC'),
    marked  SimpleAggregateFunction(max, UInt8),
    done    SimpleAggregateFunction(max, UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (kind, ts)
TTL ts + INTERVAL $ttl_days DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_book_marks_mv TO $db.minute_book AS
SELECT CAST('tcp' AS Enum8('tcp' = 1, 'calls' = 2)) AS kind, ts, toUInt8(max(records) > 0) AS marked, toUInt8(0) AS done
FROM $db.minute_marks GROUP BY ts;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_book_resolved_mv TO $db.minute_book AS
SELECT CAST('tcp' AS Enum8('tcp' = 1, 'calls' = 2)) AS kind, ts, toUInt8(0) AS marked, toUInt8(1) AS done
FROM $db.resolved_minutes GROUP BY ts;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_book_span_marks_mv TO $db.minute_book AS
SELECT CAST('calls' AS Enum8('tcp' = 1, 'calls' = 2)) AS kind, ts, toUInt8(max(spans) > 0) AS marked, toUInt8(0) AS done
FROM $db.span_marks GROUP BY ts;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.minute_book_linked_mv TO $db.minute_book AS
SELECT CAST('calls' AS Enum8('tcp' = 1, 'calls' = 2)) AS kind, ts, toUInt8(0) AS marked, toUInt8(1) AS done
FROM $db.resolved_call_minutes GROUP BY ts;

-- Stores written before this table existed: the same from the four tables.
INSERT INTO $db.minute_book (kind, ts, marked, done)
SELECT kind, ts, max(marked), max(done) FROM (
    SELECT CAST('tcp' AS Enum8('tcp' = 1, 'calls' = 2)) AS kind, ts, toUInt8(records > 0) AS marked, toUInt8(0) AS done
    FROM $db.minute_marks
    UNION ALL SELECT 'tcp', ts, 0, 1 FROM $db.resolved_minutes
    UNION ALL SELECT 'calls', ts, toUInt8(spans > 0), 0 FROM $db.span_marks
    UNION ALL SELECT 'calls', ts, 0, 1 FROM $db.resolved_call_minutes
) GROUP BY kind, ts;
