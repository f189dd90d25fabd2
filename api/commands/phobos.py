"""The ``phobos`` command: one entry point, a subcommand per job.

Subcommands import what they need when they run, and ``main`` builds the
options of the one subcommand it runs, so ``phobos trace`` on a host loads
neither the store (pyarrow, chDB) nor Flask, and ``phobos sql`` does not load
BCC; this module itself imports only the standard library.  Errors that a
user can fix (bad store URL, store in use, bad catalog, malformed records)
are printed as one message with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # imported when a subcommand runs, not by `phobos` itself
    from api.storage import Store

__all__ = ["main", "build_parser", "COMMANDS"]

EXAMPLES = """\
examples:
  phobos demo                                  # migrate ./data/phobos, simulate a fleet, print a summary
  phobos migrate --store chdb://./data/phobos  # create or upgrade the schema (idempotent)
  phobos simulate --areas 30 --services 500 --instances 5000 --from -24h
  phobos catalog load api/catalog/example.yaml
  phobos resolve --once                        # resolve what was stored before the stage ran
  phobos sql "SELECT service, sum(connects) FROM phobos.connections GROUP BY service"
  phobos trace --sink stdout | phobos load -  # trace this host into the store (root)
"""


class UsageError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def _env(name: str) -> Any:
    """A flag's default: the setting ``name`` (``api.config.SETTINGS``) from its PHOBOS_* variable."""
    from api.config import SETTINGS

    return SETTINGS.default(name, "phobos")


def _store_arg(parser: argparse.ArgumentParser) -> None:
    from api.storage import DEFAULT_STORE_URL

    parser.add_argument(
        "--store",
        default=_env("STORE") or DEFAULT_STORE_URL,
        help="chdb:///path/to/dir (embedded) or clickhouse://user:pass@host:9000/phobos "
        "(env PHOBOS_STORE; default %(default)s)",
    )


def _open_store(url: str | None, role: str) -> Any:
    try:
        from api.storage import open_store
    except ImportError as err:  # a tracer-only installation
        _missing(err)
    return open_store(url, role=role)


def _is_store_error(err: BaseException) -> bool:
    """Whether ``err`` is the store's ``StoreError`` (only a loaded store raises one)."""
    storage = sys.modules.get("api.storage")
    return storage is not None and isinstance(err, storage.StoreError)


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.print_analyst_user:
        from api.storage import StoreError, parse_store_url
        from api.storage.migrations import analyst_user_statements

        db = parse_store_url(args.store).database
        try:
            statements = analyst_user_statements(db, args.print_analyst_user,
                                                 _env("SQL_PASSWORD"), args.cluster)
        except StoreError as err:
            raise UsageError(str(err)) from None
        for statement in statements:
            print(statement + ";\n")
        return 0
    if args.print_ddl:
        from api.storage import parse_store_url
        from api.storage.migrations import (DEFAULT_SPAN_TTL_HOURS, DEFAULT_TTL_DAYS, schema_files,
                                            schema_statements)

        db = parse_store_url(args.store).database
        for _, _, path in schema_files():
            for statement in schema_statements(path.read_text(), db, args.ttl_days or DEFAULT_TTL_DAYS, args.cluster,
                                               args.span_ttl_hours or DEFAULT_SPAN_TTL_HOURS):
                print(statement + ";\n")
        return 0
    with _open_store(args.store, "phobos migrate") as store:
        changes = store.migrate(ttl_days=args.ttl_days, cluster=args.cluster, span_ttl_hours=args.span_ttl_hours)
        if "applied 003_resolved.sql" in changes:
            from api.resolution.stage import Resolver

            # Records stored before the resolved tables existed get their minute
            # marks now, so views know those minutes are still to be resolved.
            marked = Resolver(store).seed_marks()
            if marked:
                changes.append(f"marked {marked} minutes of earlier records for the resolution stage "
                               f"(`phobos resolve --once` resolves them now)")
        if args.kafka:
            from api.commands.ingest import migrate_from_args

            changes += migrate_from_args(store, args)
        version = store.schema_version()
    for change in changes:
        print(change)
    print(f"{args.store}: schema version {version}" + ("" if changes else " (already up to date)"))
    return 0


_SQL_FORMATS = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow"}


def cmd_sql(args: argparse.Namespace) -> int:
    query = args.query if args.query != "-" else sys.stdin.read()
    from api.analysts.sql import SQLRefused, read_limits, run_sql
    from api.config import load_config

    cfg = load_config()
    limits = read_limits(cfg)
    with _open_store(args.store, "phobos sql") as store:
        # The same check and read-only connection as the API's SQL endpoint.
        reader = store.open_reader(limits, cfg.get("SQL_STORE"))
        try:
            text = run_sql(reader, query, _SQL_FORMATS[args.format])
        except SQLRefused as err:
            raise UsageError(f"refused (phobos sql is readonly): {err}") from None
        finally:
            reader.close()
    sys.stdout.write(text)
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from tracer.catalog import CatalogError, load_catalog

    try:
        catalog = load_catalog(args.file)
    except CatalogError as err:
        raise UsageError("\n".join(getattr(err, "errors", None) or [str(err)])) from None
    except OSError as err:
        raise UsageError(f"cannot read {args.file}: {err.strerror}") from None
    counts = f"{len(catalog.areas)} areas, {len(catalog.services)} services, {len(catalog.externals)} externals"
    if args.action == "check":
        print(f"{args.file}: OK ({counts})")
        return 0
    from api.catalog.versions import load_into_store

    with _open_store(args.store, "phobos catalog load") as store:
        store.migrate()
        version = load_into_store(store, catalog, source=os.path.abspath(args.file))
    print(f"{args.file}: loaded as catalog version {version} ({counts})")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from api.ingest.batches import ingest_batch
    from api.ingest.decode import Undecodable, decode_record

    # Bytes, not text: a line that is not UTF-8 is one refused record, not the end of the load.
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    totals = {"connections": 0, "listeners": 0, "rejected": 0}
    with _open_store(args.store, "phobos load") as store, stream:
        store.migrate()
        pending: dict[str, list[Any]] = {"connections": [], "listeners": []}

        def flush(kind: str) -> None:
            if pending[kind]:
                result = ingest_batch(store, kind, pending[kind], source=f"load:{args.file}")
                totals[kind] += result.accepted
                totals["rejected"] += len(result.rejected)
                for rejection in result.rejected[:5]:
                    print(f"rejected {kind} {rejection.message}", file=sys.stderr)
                pending[kind] = []

        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            record = decode_record(line.rstrip(b"\r\n"))
            if isinstance(record, Undecodable):
                print(f"{args.file}:{lineno}: {record.reason}", file=sys.stderr)
                record = Undecodable(record.raw, f"line {lineno}: {record.reason}")
            # Listener records are the ones without a direction; a line that is
            # not even JSON is kept with the connections' dead letters.
            if args.kind:
                kind = args.kind
            elif isinstance(record, Undecodable) or (isinstance(record, dict) and "direction" in record):
                kind = "connections"
            else:
                kind = "listeners"
            pending[kind].append(record)
            if len(pending[kind]) >= args.batch:
                flush(kind)
        for kind in pending:
            flush(kind)
    print(
        f"loaded {totals['connections']} connection and {totals['listeners']} listener records, "
        f"rejected {totals['rejected']}"
    )
    return 0 if totals["rejected"] == 0 else 1


def print_summary(store: Store, out: Any = sys.stdout) -> None:
    """A short picture of what a store holds (used by ``summary`` and ``demo``)."""
    db = store.db
    (rows, first, last, hosts, services) = store.query(
        f"SELECT count(), min(ts), max(ts), uniqExact(host), uniqExact(service) FROM {db}.connections"
    )[0]
    listeners = store.query(f"SELECT count() FROM {db}.listeners")[0][0]
    rollups = store.query(
        f"SELECT (SELECT count() FROM {db}.edges_1m), (SELECT count() FROM {db}.edges_1h)"
    )[0]
    catalog = store.query(
        f"SELECT areas, services, externals, version FROM {db}.catalog_loads ORDER BY version DESC LIMIT 1"
    )
    print(f"store           {store.url.redacted()} (database {db}, schema v{store.schema_version()})", file=out)
    print(f"connections     {rows:,} records from {hosts:,} hosts, {services:,} services", file=out)
    if rows:
        print(f"time range      {first} .. {last} UTC", file=out)
    print(f"listeners       {listeners:,} records", file=out)
    print(f"rollups         edges_1m {rollups[0]:,} rows, edges_1h {rollups[1]:,} rows", file=out)
    if catalog:
        a, s, e, v = catalog[0]
        print(f"catalog         v{v}: {a} areas, {s} services, {e} externals", file=out)
    if not rows:
        return
    top = store.query(
        f"""
        SELECT service, remote_port, sum(connects) AS connects, sum(failures) AS failures,
               round(sum(open_seconds) / greatest(1, dateDiff('second', min(ts), max(ts)) + 3600), 1) AS avg_open
        FROM {db}.edges_1h WHERE direction = 'outbound'
        GROUP BY service, remote_port ORDER BY connects DESC LIMIT 8
        """
    )
    print("busiest clients (outbound, all time):", file=out)
    print(f"  {'service':<28} {'port':>5} {'connects':>12} {'failures':>9} {'avg open':>9}", file=out)
    for service, port, connects, failures, avg_open in top:
        print(f"  {service:<28} {port:>5} {connects:>12,} {failures:>9,} {avg_open:>9}", file=out)
    worst = store.query(
        f"""
        SELECT ts AS hour, service, sum(failures) AS failed
        FROM {db}.edges_1h WHERE direction = 'outbound'
        GROUP BY hour, service HAVING failed > 0 ORDER BY failed DESC LIMIT 3
        """
    )
    if worst:
        print("most failing hours:", file=out)
        for hour, service, failures in worst:
            print(f"  {hour}  {service:<28} {failures:,} failed connects", file=out)


def cmd_summary(args: argparse.Namespace) -> int:
    with _open_store(args.store, "phobos summary") as store:
        if store.schema_version() == 0:
            raise UsageError(f"{args.store} has no Phobos schema yet; run `phobos migrate --store {args.store}`")
        print_summary(store)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from api.simulation import simulate

    sim_args = simulate.build_parser().parse_args(
        [
            "--store", args.store,
            "--areas", str(args.areas), "--services", str(args.services),
            "--instances", str(args.instances), "--from", f"-{int(args.hours * 60)}m", "--seed", str(args.seed),
        ]
    )
    started = time.time()
    with _open_store(args.store, "phobos demo") as store:
        for change in store.migrate():
            print(change)
        summary = simulate.simulate(store, simulate.config_from_args(sim_args), progress=simulate.default_progress())
        print(f"simulated {summary.describe()} in {time.time() - started:.1f} s")
        started = time.time()
        minutes = resolve_pending(store)
        print(f"resolved {minutes} minutes in {time.time() - started:.1f} s")
        print()
        print_summary(store)
    return 0


def resolve_pending(store: Store, out: Any = sys.stderr, settle_s: float | None = None) -> int:
    """Resolve every settled minute the stage has not (``phobos resolve --once``,
    ``phobos demo``), printing progress; returns the minutes resolved."""
    from api.config import load_config
    from api.resolution.stage import Resolver

    resolver = Resolver.from_config(store, load_config(), settle_s)
    started, total = time.time(), 0
    resolver.seed_marks()
    todo = resolver.pending()
    while todo:
        chunk, todo = todo[:120], todo[120:]
        total += resolver.resolve(chunk)
        rate = total / max(time.time() - started, 1e-6)
        print(f"resolved {total} minutes, {len(todo)} to go ({rate:.0f} minutes/s)", file=out, flush=True)
        if not todo:
            todo = resolver.pending()  # rows that arrived meanwhile
    return total


def cmd_resolve(args: argparse.Namespace) -> int:
    import signal

    from api.config import load_config
    from api.resolution.stage import Resolver

    with _open_store(args.store, "phobos resolve") as store:
        if store.schema_version() == 0:
            raise UsageError(f"{args.store} has no Phobos schema yet; run `phobos migrate --store {args.store}`")
        if args.once:
            total = resolve_pending(store, settle_s=args.settle)
            print(f"resolved {total} minutes; nothing left to resolve")
            return 0
        resolver = Resolver.from_config(store, load_config(), args.settle)
        signal.signal(signal.SIGTERM, lambda *_: resolver.stop(timeout_s=0))
        resolver.start()
        print(f"phobos resolve: resolving {store.url.redacted()} as minutes close (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        try:
            while resolver.wait(args.report_s):
                p = resolver.progress
                print(f"phobos resolve: {p.resolved_minutes} minutes resolved, {p.pending} pending"
                      + (", standing by (another stage holds the lease)" if p.standing_by else "")
                      + (f", last error: {p.last_error}" if p.last_error else ""), file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            resolver.stop()
    return 0


def configure_demo(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--areas", type=int, default=30)
    p.add_argument("--services", type=int, default=500)
    p.add_argument("--instances", type=int, default=5000)
    p.add_argument("--hours", type=float, default=3, help="hours of history to simulate (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)


def configure_resolve(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--once", action="store_true", help="resolve every settled minute not yet resolved, then exit")
    p.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                   help="resolve a minute this long after it ends (env PHOBOS_RESOLVE_SETTLE; default 90)")
    p.add_argument("--report-s", type=float, default=30.0, help="seconds between progress lines")


def configure_migrate(p: argparse.ArgumentParser) -> None:
    from api.commands.ingest import configure_migrate_parser

    _store_arg(p)
    p.add_argument("--ttl-days", type=int, default=_env("TTL_DAYS"),
                   help="retention of raw records in days (env PHOBOS_TTL_DAYS; default: keep the "
                   "current one, 30 for a new store)")
    p.add_argument("--span-ttl-hours", type=int, default=_env("SPAN_TTL_HOURS"),
                   help="how long trace spans wait for the rest of their trace, in hours (env "
                   "PHOBOS_SPAN_TTL_HOURS; default: keep the current one, 6 for a new store)")
    p.add_argument("--cluster", default=_env("CLUSTER"),
                   help="ClickHouse cluster name: Replicated*/Distributed tables, DDL ON CLUSTER "
                   "(env PHOBOS_CLUSTER)")
    p.add_argument("--print-analyst-user", metavar="USER",
                   help="print the statements that make USER the read-only ClickHouse user of the "
                        "analysts' SQL (password from PHOBOS_SQL_PASSWORD), then exit")
    p.add_argument("--print-ddl", action="store_true",
                   help="print the statements migrate would run on an empty store, and exit")
    configure_migrate_parser(p)


def configure_sql(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--format", choices=sorted(_SQL_FORMATS), default="table")
    p.add_argument("query", help="the SQL text, or - to read it from standard input")


def configure_catalog(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "load"])
    p.add_argument("file")
    # No store module needed to check a file (a tracer host has none);
    # open_store picks the default store when --store and PHOBOS_STORE are unset.
    p.add_argument("--store", default=_env("STORE"),
                   help="store to load into: as for phobos migrate (env PHOBOS_STORE; default the "
                   "embedded store in ./data/phobos)")


def configure_load(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("file", help="a file of JSON lines, or - for standard input")
    p.add_argument("--kind", choices=["connections", "listeners"], help="record kind (default: by content)")
    p.add_argument("--batch", type=int, default=10000, help="records per insert (default %(default)s)")


def _delegate(
    module: str, configure: str = "configure_parser", run: str = "run"
) -> tuple[Callable[[argparse.ArgumentParser], Any], Callable[[argparse.Namespace], int]]:
    """configure/run of a subcommand implemented in another module, imported lazily."""
    import importlib

    def configure_fn(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), configure)(parser)

    def run_fn(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), run)(args)

    return configure_fn, run_fn


Configure = Callable[[argparse.ArgumentParser], Any]
Run = Callable[[argparse.Namespace], int]

#: Every subcommand in the order ``phobos --help`` lists them: (name, help,
#: configure(parser), run(args)).  Those implemented next to what they run
#: name their module; it is imported only when the subcommand is configured.
COMMANDS: tuple[tuple[str, str, Configure, Run], ...] = (
    ("demo", "migrate the embedded store, fill it with a simulated fleet, print a summary", configure_demo, cmd_demo),
    ("resolve", "run the resolution stage: endpoint rows -> resolved edges as minutes close",
     configure_resolve, cmd_resolve),
    ("migrate", "create or upgrade the ClickHouse schema (idempotent)", configure_migrate, cmd_migrate),
    ("sql", "run a read-only query and print the result", configure_sql, cmd_sql),
    ("catalog", "check or load a catalog YAML file", configure_catalog, cmd_catalog),
    ("load", "ingest JSON-lines records (e.g. from `phobos trace --sink stdout`)", configure_load, cmd_load),
    ("summary", "print what a store holds", _store_arg, cmd_summary),
    ("serve", "serve the API and web UI", *_delegate("api.commands.serve")),
    ("up", "one command: API + UI on the embedded store, with the tracer (root) or a simulated fleet",
     *_delegate("api.commands.up")),
    ("simulate", "write a simulated fleet's records (backfill and/or live)", *_delegate("api.simulation.simulate")),
    ("trace", "trace this host's TCP connections with eBPF (root)", *_delegate("tracer.agent")),
    ("ingest", "consume records from Kafka into a store", *_delegate("api.commands.ingest")),
    ("kafka", "Kafka topic set-up", *_delegate("api.commands.ingest", "configure_kafka_parser", "run_kafka")),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``phobos`` parser; with ``command``, only that subcommand gets its options.

    Configuring a subcommand imports its module (the store, Flask, the
    tracer ...), so ``main`` configures just the one it runs; every
    subcommand is listed either way.  A subcommand whose module cannot be
    imported (a tracer-only image has no pyarrow) says so when run.
    """
    parser = argparse.ArgumentParser(
        prog="phobos",
        description="Kernel-level service dependency maps.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, configure, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if command is not None and name != command:
            continue
        try:
            configure(p)
        except ImportError as err:
            p.set_defaults(func=lambda a, e=err: _missing(e), unavailable=True)
            continue
        p.set_defaults(func=run)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" for none, e.g. ``phobos --help``)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _missing(err: ImportError) -> int:
    raise UsageError(f"this installation lacks {err.name or err}: {err}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):  # else say what is missing, not how to call it
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"phobos {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:
        if not (isinstance(err, UsageError) or _is_store_error(err)):
            raise
        print(f"phobos {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
