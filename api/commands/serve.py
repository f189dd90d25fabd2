"""``phobos serve``: run the API and the web page with Flask's threaded development server.

This is the embedded mode's server: one process (chDB opens a data
directory from one process only) with a thread per request.  For
production run gunicorn with one worker and threads::

    PHOBOS_STORE=URL PHOBOS_TOKEN=SECRET gunicorn -w 1 --threads 8 \\
        -b 0.0.0.0:8080 'api.app:create_app()'

Write endpoints (ingest, alerts, spans) need ``PHOBOS_TOKEN``; without one
they are only open when the server is bound to loopback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.storage import Store

__all__ = ["configure_parser", "run", "start_kafka_ingest"]

log = logging.getLogger("phobos.serve")

EXAMPLES = """examples:
  phobos serve                                         # chdb://./data/phobos on 127.0.0.1:8080
  phobos serve --store chdb:///var/lib/phobos --port 9000
  PHOBOS_TOKEN=secret phobos serve --host 0.0.0.0      # writes need 'Authorization: Bearer secret'
  phobos serve --kafka 127.0.0.1:9092                  # also consume phobos.connections/.listeners into the store
production:
  gunicorn -w 1 --threads 8 -b 0.0.0.0:8080 'api.app:create_app()'
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``phobos serve``'s options to ``parser``."""
    parser.description = "Serve the Phobos API (graphs, ingest, SQL) over HTTP."
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    from api.config import SETTINGS

    def env(name: str) -> object:
        return SETTINGS.default(name, "phobos serve")

    parser.add_argument("--store", default=env("STORE"),
                        help="store URL (env PHOBOS_STORE; default chdb://./data/phobos)")
    parser.add_argument("--host", default=env("BIND"),
                        help="address to bind (env PHOBOS_BIND; default %(default)s)")
    parser.add_argument("--port", type=int, default=env("PORT"),
                        help="port (env PHOBOS_PORT; default %(default)s)")
    parser.add_argument("--migrate", action="store_true",
                        help="create or upgrade the schema before serving")
    parser.add_argument("--kafka", default=env("KAFKA_BROKERS"), metavar="BROKERS",
                        help="also consume the record topics from BROKERS into the store, in this process "
                        "(the way an embedded store ingests from Kafka while it is served) "
                        "(env PHOBOS_KAFKA_BROKERS)")
    parser.add_argument("--topic-prefix", default=env("TOPIC_PREFIX"),
                        help="with --kafka: topics PREFIX.connections and PREFIX.listeners "
                        "(env PHOBOS_TOPIC_PREFIX; default %(default)s)")
    parser.add_argument("--no-resolve", action="store_true",
                        default=env("NO_RESOLVE"),
                        help="do not run the resolution stage in this process (a `phobos resolve` runs it); "
                             "views then resolve what the stage has not (env PHOBOS_NO_RESOLVE)")
    parser.add_argument("--debug", action="store_true", help="Flask debug mode (never in production)")


def start_kafka_ingest(store: Store, brokers: str, prefix: str) -> tuple[Any, threading.Thread]:
    """Consume ``prefix``'s record topics into ``store`` on a background thread.

    chDB opens a data directory from one process only, so the process that
    serves an embedded store is also the one that must write Kafka's records
    into it; a separate ``phobos ingest`` would be refused the store.
    """
    from api.ingest.kafka_consumer import KafkaIngest
    from api.ingest.kafka_topics import topics_for

    topics = {topic: kind for kind, topic in topics_for(prefix).items()}
    ingest = KafkaIngest(store, brokers, topics)

    def report(stats: dict[str, Any]) -> None:
        log.info("kafka ingest: %s", {k: v for k, v in stats.items() if k != "lag"})

    thread = threading.Thread(target=ingest.run, kwargs={"report_s": 60.0, "report": report},
                              name="phobos-kafka-ingest", daemon=True)
    thread.start()
    log.info("consuming %s from %s into the store", ", ".join(topics), brokers)
    return ingest, thread


def run(args: argparse.Namespace) -> int:
    """Open the store, then serve until interrupted; returns the exit status."""
    from api.app import create_app, start_resolution
    from api.storage import StoreError, open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = open_store(args.store, role="phobos serve")
        if args.migrate:
            for change in store.migrate():
                print(change, file=sys.stderr)
        elif store.schema_version() == 0:
            print("the store has no schema; run `phobos migrate` or pass --migrate", file=sys.stderr)
            return 2
    except StoreError as err:
        print(f"phobos serve: {err}", file=sys.stderr)
        return 2
    try:
        app = create_app({"STORE": store, "BIND_HOST": args.host})
    except ValueError as err:
        print(f"phobos serve: {err}", file=sys.stderr)
        store.close()
        return 2
    if not app.config.get("TOKEN") and args.host not in ("127.0.0.1", "::1", "localhost"):
        print("phobos serve: PHOBOS_TOKEN is unset and the server is not bound to loopback: "
              "write endpoints are refused", file=sys.stderr)
    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (systemd, Kubernetes) stops like Ctrl-C: the finally below runs.
    signal.signal(signal.SIGTERM, stop)
    ingest = None
    resolver = start_resolution(app, store) if not args.no_resolve else None
    if args.kafka:
        ingest, ingest_thread = start_kafka_ingest(store, args.kafka, args.topic_prefix)
    try:
        # Threads, not processes: the embedded store lives in this process.
        app.run(host=args.host, port=args.port, threaded=True, debug=args.debug, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        if ingest is not None:
            # The batch in hand is inserted and committed before the store closes.
            ingest.stop.set()
            ingest_thread.join(timeout=30)
            ingest.close()
        if resolver is not None:
            resolver.stop()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phobos serve")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
