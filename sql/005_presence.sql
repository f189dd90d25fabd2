-- When each service was first and last reported, by any record (a
-- connection or a listener): the service summary's "first seen" / "last
-- seen" in one small table instead of a scan of the whole retention. min and
-- max forget nothing if the same records count twice, so the back-fill below
-- may overlap what the views write while it runs. A service that stays
-- silent for the retention drops out with the records it summarised.
CREATE TABLE IF NOT EXISTS $db.service_presence
(
    service     LowCardinality(String),
    first_seen  SimpleAggregateFunction(min, DateTime('UTC')),
    last_seen   SimpleAggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY service
TTL last_seen + INTERVAL $ttl_days DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.service_presence_connections_mv TO $db.service_presence AS
SELECT service, min(ts) AS first_seen, max(ts) AS last_seen
FROM $db.connections GROUP BY service;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.service_presence_listeners_mv TO $db.service_presence AS
SELECT service, min(ts) AS first_seen, max(ts) AS last_seen
FROM $db.listeners GROUP BY service;

-- Stores written before this table existed: their minute rollup (to the
-- start of the minute) and listener spans say when.
INSERT INTO $db.service_presence (service, first_seen, last_seen)
SELECT service, min(f), max(l) FROM (
    SELECT service, min(ts) AS f, max(ts) AS l FROM $db.edges_1m GROUP BY service
    UNION ALL
    SELECT service, min(first_seen), max(last_seen) FROM $db.listener_spans GROUP BY service
) GROUP BY service;
