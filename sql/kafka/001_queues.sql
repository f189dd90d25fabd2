-- Phobos Kafka ingestion, server mode: ClickHouse consumes the tracer's
-- topics itself. Applied by `phobos migrate --kafka BROKERS` (api/kafka_ingest.py,
-- migrate_kafka) after the core schema; not applied by the core migrate.
--
-- Placeholders: $db, $brokers, $topic_connections, $topic_listeners, $group,
-- $ttl_days. Changing brokers/topics/group re-creates the queues and views
-- (migrate_kafka drops the Kafka engine tables and materialized views of this
-- file first); tables holding data are kept.
--
-- Pattern (ClickHouse docs, Kafka table engine): x_queue (Kafka engine) ->
-- x_mv (explicit columns, valid rows only) -> x; x_dead_mv sends everything
-- else to dead_letters with the reason; x_offsets_mv keeps
-- _topic/_partition/_offset of every message in kafka_offsets.
--
-- Messages are JSON lines (JSONEachRow, one or more records per message).
-- Queue columns are deliberately loose (String for times, addresses and
-- enums, Int64 for counts) so that a bad value is a row with a reason in
-- dead_letters instead of a parse error for the whole message; the views
-- apply the record contract (tracer/records.py) in SQL. Messages that are
-- not JSON at all arrive with _error set (kafka_handle_error_mode='stream').
-- Optional fields of the contract (nat_ip, nat_port and the health
-- figures: tracers older than them omit them) are Nullable in the queue (a
-- Kafka engine table takes no DEFAULT clause): absent is NULL, and the
-- views read NULL as the default. An array cannot be Nullable: an absent
-- handshake_hist reads as [], its default.
--
-- Delivery is at-least-once: the Kafka engine commits after the block is
-- written; a crash between the two re-reads messages. Server-side
-- deduplication of such replays is not possible with the Kafka engine (no
-- insert_deduplication_token per offset range); `phobos ingest` (consumer
-- mode) is exact and is what the tests measure.

CREATE TABLE IF NOT EXISTS $db.kafka_offsets
(
    topic        LowCardinality(String),
    partition    UInt32,
    offset       UInt64,
    kind         LowCardinality(String),
    rows         UInt64,
    rejected     UInt64,
    received_at  DateTime('UTC')
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toDate(received_at)
ORDER BY (topic, partition, offset)
TTL received_at + INTERVAL $ttl_days DAY;

CREATE TABLE IF NOT EXISTS $db.connections_queue
(
    v               Int64,
    ts              String,
    interval_s      Int64,
    dc              String,
    host            String,
    host_ip         String,
    netns           Int64,
    pid             Int64,
    comm            String,
    service         String,
    container_id    String,
    pod             String,
    namespace       String,
    direction       String,
    local_ip        String,
    local_port      Int64,
    remote_ip       String,
    remote_port     Int64,
    connects        Int64,
    accepts         Int64,
    closes          Int64,
    failures        Int64,
    open            Int64,
    duration_ms_sum UInt64,
    bytes_sent      UInt64,
    bytes_received  UInt64,
    nat_ip          Nullable(String),
    nat_port        Nullable(Int64),
    handshakes      Nullable(Int64),
    handshake_us_sum Nullable(UInt64),
    handshake_hist  Array(Int64),
    retransmits     Nullable(UInt64),
    aborts          Nullable(Int64)
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '$brokers',
    kafka_topic_list = '$topic_connections',
    kafka_group_name = '$group',
    kafka_format = 'JSONEachRow',
    kafka_handle_error_mode = 'stream',
    kafka_num_consumers = 1,
    kafka_max_block_size = 65536,
    kafka_flush_interval_ms = 1000,
    kafka_client_id = 'phobos-clickhouse';

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.connections_mv TO $db.connections AS
SELECT
    toUInt8(v) AS v,
    parseDateTimeBestEffort(ts, 'UTC') AS ts,
    toUInt32(interval_s) AS interval_s,
    dc, host,
    toIPv6(host_ip) AS host_ip,
    toUInt32(netns) AS netns,
    toUInt32(pid) AS pid,
    comm, service, container_id, pod, namespace,
    CAST(direction, 'Enum8(\'outbound\' = 1, \'inbound\' = 2)') AS direction,
    toIPv6(local_ip) AS local_ip,
    toUInt16(local_port) AS local_port,
    toIPv6(remote_ip) AS remote_ip,
    toUInt16(remote_port) AS remote_port,
    toUInt32(connects) AS connects, toUInt32(accepts) AS accepts, toUInt32(closes) AS closes,
    toUInt32(failures) AS failures, toUInt32(open) AS open,
    duration_ms_sum, bytes_sent, bytes_received,
    toIPv6(ifNull(nat_ip, '::')) AS nat_ip,
    toUInt16(ifNull(nat_port, 0)) AS nat_port,
    toUInt32(ifNull(handshakes, 0)) AS handshakes,
    ifNull(handshake_us_sum, 0) AS handshake_us_sum,
    arrayMap(x -> toUInt32(x), handshake_hist) AS handshake_hist,
    ifNull(retransmits, 0) AS retransmits,
    toUInt32(ifNull(aborts, 0)) AS aborts
FROM $db.connections_queue AS q
WHERE length(_error) = 0
  AND q.v = 1
  AND isValidUTF8(concat(q.dc, q.host, q.comm, q.service, q.container_id, q.pod, q.namespace))
  AND parseDateTimeBestEffortOrNull(q.ts, 'UTC') IS NOT NULL
  AND toIPv6OrNull(q.host_ip) IS NOT NULL AND toIPv6OrNull(q.local_ip) IS NOT NULL
  AND toIPv6OrNull(q.remote_ip) IS NOT NULL AND toIPv6OrNull(ifNull(q.nat_ip, '::')) IS NOT NULL
  AND q.direction IN ('outbound', 'inbound')
  AND least(q.interval_s, q.netns, q.pid, q.local_port, q.remote_port, ifNull(q.nat_port, 0), q.connects, q.accepts, q.closes, q.failures, q.open, ifNull(q.handshakes, 0), ifNull(q.aborts, 0)) >= 0
  AND greatest(q.interval_s, q.netns, q.pid, q.connects, q.accepts, q.closes, q.failures, q.open, ifNull(q.handshakes, 0), ifNull(q.aborts, 0)) <= 4294967295
  AND greatest(q.local_port, q.remote_port, ifNull(q.nat_port, 0)) <= 65535
  AND length(q.handshake_hist) IN (0, 32) AND arrayAll(x -> x >= 0 AND x <= 4294967295, q.handshake_hist);

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.connections_dead_mv TO $db.dead_letters AS
SELECT
    now() AS received_at,
    concat('kafka:', _topic, '/', toString(_partition), '@', toString(_offset)) AS source,
    'connections' AS kind,
    multiIf(
        length(_error) > 0, concat('unreadable message: ', _error),
        v != 1, concat('unsupported record version ', toString(v), ', this Phobos reads v=1'),
        NOT isValidUTF8(concat(dc, host, comm, service, container_id, pod, namespace)), 'a text field is not valid UTF-8',
        parseDateTimeBestEffortOrNull(ts, 'UTC') IS NULL, concat('field \'ts\' ', concat('''', ts, ''''), ' is not a time'),
        toIPv6OrNull(host_ip) IS NULL OR toIPv6OrNull(local_ip) IS NULL OR toIPv6OrNull(remote_ip) IS NULL
            OR toIPv6OrNull(ifNull(nat_ip, '::')) IS NULL,
            'field host_ip, local_ip, remote_ip or nat_ip is not an IP address',
        direction NOT IN ('outbound', 'inbound'), concat('field \'direction\' must be outbound or inbound, got ', concat('''', direction, '''')),
        length(handshake_hist) NOT IN (0, 32), 'field \'handshake_hist\' must hold 32 numbers or none',
        'a count or port is negative or too large') AS reason,
    if(length(_error) > 0, _raw_message,
       formatRowNoNewline('JSONEachRow', v, ts, interval_s, dc, host, host_ip, netns, pid, comm, service,
                          container_id, pod, namespace, direction, local_ip, local_port, remote_ip, remote_port,
                          connects, accepts, closes, failures, open, duration_ms_sum, bytes_sent, bytes_received,
                          nat_ip, nat_port, handshakes, handshake_us_sum, handshake_hist, retransmits,
                          aborts)) AS raw
FROM $db.connections_queue
WHERE NOT (
    length(_error) = 0
    AND v = 1
    AND isValidUTF8(concat(dc, host, comm, service, container_id, pod, namespace))
    AND parseDateTimeBestEffortOrNull(ts, 'UTC') IS NOT NULL
    AND toIPv6OrNull(host_ip) IS NOT NULL AND toIPv6OrNull(local_ip) IS NOT NULL
    AND toIPv6OrNull(remote_ip) IS NOT NULL AND toIPv6OrNull(ifNull(nat_ip, '::')) IS NOT NULL
    AND direction IN ('outbound', 'inbound')
    AND least(interval_s, netns, pid, local_port, remote_port, ifNull(nat_port, 0), connects, accepts, closes, failures, open, ifNull(handshakes, 0), ifNull(aborts, 0)) >= 0
    AND greatest(interval_s, netns, pid, connects, accepts, closes, failures, open, ifNull(handshakes, 0), ifNull(aborts, 0)) <= 4294967295
    AND greatest(local_port, remote_port, ifNull(nat_port, 0)) <= 65535
    AND length(handshake_hist) IN (0, 32) AND arrayAll(x -> x >= 0 AND x <= 4294967295, handshake_hist));

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.connections_offsets_mv TO $db.kafka_offsets AS
SELECT
    _topic AS topic, _partition AS partition, _offset AS offset, 'connections' AS kind,
    countIf(length(_error) = 0) AS rows, countIf(length(_error) > 0) AS rejected, now() AS received_at
FROM $db.connections_queue
GROUP BY _topic, _partition, _offset;

CREATE TABLE IF NOT EXISTS $db.listeners_queue
(
    v             Int64,
    ts            String,
    dc            String,
    host          String,
    ip            String,
    port          Int64,
    pid           Int64,
    comm          String,
    service       String,
    container_id  String,
    pod           String,
    namespace     String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '$brokers',
    kafka_topic_list = '$topic_listeners',
    kafka_group_name = '$group',
    kafka_format = 'JSONEachRow',
    kafka_handle_error_mode = 'stream',
    kafka_num_consumers = 1,
    kafka_max_block_size = 65536,
    kafka_flush_interval_ms = 1000,
    kafka_client_id = 'phobos-clickhouse';

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.listeners_mv TO $db.listeners AS
SELECT
    toUInt8(v) AS v,
    parseDateTimeBestEffort(ts, 'UTC') AS ts,
    dc, host,
    toIPv6(ip) AS ip,
    toUInt16(port) AS port,
    toUInt32(pid) AS pid,
    comm, service, container_id, pod, namespace
FROM $db.listeners_queue AS q
WHERE length(_error) = 0
  AND q.v = 1
  AND isValidUTF8(concat(q.dc, q.host, q.comm, q.service, q.container_id, q.pod, q.namespace))
  AND parseDateTimeBestEffortOrNull(q.ts, 'UTC') IS NOT NULL
  AND toIPv6OrNull(q.ip) IS NOT NULL
  AND q.port BETWEEN 0 AND 65535
  AND q.pid BETWEEN 0 AND 4294967295;

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.listeners_dead_mv TO $db.dead_letters AS
SELECT
    now() AS received_at,
    concat('kafka:', _topic, '/', toString(_partition), '@', toString(_offset)) AS source,
    'listeners' AS kind,
    multiIf(
        length(_error) > 0, concat('unreadable message: ', _error),
        v != 1, concat('unsupported record version ', toString(v), ', this Phobos reads v=1'),
        NOT isValidUTF8(concat(dc, host, comm, service, container_id, pod, namespace)), 'a text field is not valid UTF-8',
        parseDateTimeBestEffortOrNull(ts, 'UTC') IS NULL, concat('field \'ts\' ', concat('''', ts, ''''), ' is not a time'),
        toIPv6OrNull(ip) IS NULL, concat('field \'ip\' ', concat('''', ip, ''''), ' is not an IP address'),
        'field port or pid is negative or too large') AS reason,
    if(length(_error) > 0, _raw_message,
       formatRowNoNewline('JSONEachRow', v, ts, dc, host, ip, port, pid, comm, service, container_id, pod,
                          namespace)) AS raw
FROM $db.listeners_queue
WHERE NOT (
    length(_error) = 0
    AND v = 1
    AND isValidUTF8(concat(dc, host, comm, service, container_id, pod, namespace))
    AND parseDateTimeBestEffortOrNull(ts, 'UTC') IS NOT NULL
    AND toIPv6OrNull(ip) IS NOT NULL
    AND port BETWEEN 0 AND 65535
    AND pid BETWEEN 0 AND 4294967295);

CREATE MATERIALIZED VIEW IF NOT EXISTS $db.listeners_offsets_mv TO $db.kafka_offsets AS
SELECT
    _topic AS topic, _partition AS partition, _offset AS offset, 'listeners' AS kind,
    countIf(length(_error) = 0) AS rows, countIf(length(_error) > 0) AS rejected, now() AS received_at
FROM $db.listeners_queue
GROUP BY _topic, _partition, _offset;
