-- The ClickHouse user of the analysts' SQL in server mode (PHOBOS_SQL_STORE).
--
-- Not a migration: an administrator applies it once per cluster, e.g.
--   PHOBOS_SQL_PASSWORD=... phobos migrate --print-analyst-user phobos_analyst --store clickhouse://ch:9000/phobos \
--     | clickhouse-client --multiquery
-- and gives the API  PHOBOS_SQL_STORE=clickhouse://phobos_analyst:PASSWORD@ch:9000/phobos.
--
-- What it allows: SELECT and SHOW on the Phobos database and nothing else.
-- file(), url(), s3(), remote() and the other table functions need grants of
-- their own (READ ON FILE / URL / S3 / REMOTE, CREATE TEMPORARY TABLE), which
-- this user does not have, so the server refuses them whatever the API's own
-- check lets through. The profile's limits are CONST and readonly = 1, so no
-- query can lift them; they mirror the API's PHOBOS_SQL_* defaults.
CREATE SETTINGS PROFILE IF NOT EXISTS ${user}_limits ${on_cluster} SETTINGS
    readonly = 1 CONST,
    max_execution_time = 10 CONST,
    timeout_overflow_mode = 'throw' CONST,
    max_memory_usage = 2147483648 CONST,
    max_result_rows = 10000 CONST,
    max_result_bytes = 67108864 CONST,
    result_overflow_mode = 'throw' CONST,
    max_threads = 1 CONST;
CREATE USER IF NOT EXISTS ${user} ${on_cluster} IDENTIFIED WITH sha256_password BY ${password}
    DEFAULT DATABASE ${db} SETTINGS PROFILE '${user}_limits';
REVOKE ${on_cluster} ALL ON *.* FROM ${user};
GRANT ${on_cluster} SELECT, SHOW TABLES, SHOW COLUMNS ON ${db}.* TO ${user};
