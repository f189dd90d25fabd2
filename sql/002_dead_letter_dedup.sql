-- Dead letters of a replayed batch (Kafka redelivery, a retried ingest POST)
-- are stored once, like every other table's rows.
ALTER TABLE $db.dead_letters MODIFY SETTING non_replicated_deduplication_window = 10000;
