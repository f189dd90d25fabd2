"""Everything that comes in: records, spans and alerts, checked and stored once.

* ``batches.py`` - record batches from the API's ingest endpoint (the
  tracer's http sink) and ``phobos load``;
* ``kafka_consumer.py`` - records from Kafka (``phobos ingest``), in
  batches that replay exactly after a crash; ``kafka_topics.py`` - the
  topics, client settings, topic set-up and the server-mode schema;
* ``contract.py`` - the one contract check (record by record, or column by
  column for the tracer's own form), ``decode.py`` - bytes to JSON with depth
  limits, ``dead_letters.py`` - the one builder of ``dead_letters`` rows;
* ``spans.py`` - Zipkin v2 spans, ``alerts.py`` - Alertmanager notifications.
"""
