"""``phobos up``: the embedded mode in one command - store, API, UI and a data source.

What it starts, in one process group:

* the embedded store (chDB) in ``--data`` (created and migrated on first use);
* the API and the web UI on ``http://HOST:PORT/`` (Werkzeug, threads: chDB
  opens a data directory from one process only, so the API process owns it);
* when tracing is possible here (root or CAP_BPF+CAP_PERFMON, BCC, kernel
  headers, tracefs, BTF) the tracer as a child process, ``phobos trace
  --sink http://127.0.0.1:PORT``, posting this host's connections to the API;
  otherwise a message that says why tracing is off and how to turn it on;
* with ``--simulate`` a simulated fleet written in-process: an hour of
  history first, then one interval at a time in real time ("live").

Ctrl-C (or SIGTERM) stops the tracer first - it drains its last interval
into the still running API - then the simulator and the server, and closes
the store.  Everything written stays in ``--data``; the next ``phobos up``
shows it again.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.storage import Store

__all__ = ["configure_parser", "run", "main", "tracing_problems"]

log = logging.getLogger("phobos.up")

EXAMPLES = """examples:
  sudo phobos up                         # trace this host; UI on http://127.0.0.1:8080/
  phobos up --simulate                   # no privileges needed: a simulated live fleet
  phobos up --data /var/lib/phobos --port 9000
  phobos up --simulate --sim-services 500 --sim-instances 5000 --sim-areas 30
every option also reads a PHOBOS_* environment variable (PHOBOS_DATA, PHOBOS_PORT, ...)
"""


def _env(name: str) -> Any:
    from api.config import SETTINGS

    return SETTINGS.default(name, "phobos up")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``phobos up``'s options to ``parser``."""
    parser.description = ("Start Phobos on this machine: the embedded store, the API and web UI, "
                          "and the tracer (as root) or a simulated fleet (--simulate).")
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    from api.simulation.simulate import accept_relative_times

    accept_relative_times(parser)  # --sim-history -24h
    add = parser.add_argument
    add("--data", default=_env("DATA"),
        help="data directory of the embedded store, kept between runs (env PHOBOS_DATA; default %(default)s)")
    add("--port", type=int, default=_env("PORT"),
        help="HTTP port of the API and UI (env PHOBOS_PORT; default %(default)s)")
    add("--host", default=_env("BIND"),
        help="address to bind (env PHOBOS_BIND; default %(default)s); other than loopback, set "
             "PHOBOS_TOKEN or ingest is refused")
    add("--simulate", action="store_true", default=_env("UP_SIMULATE"),
        help="also write a simulated live fleet (no privileges needed) (env PHOBOS_UP_SIMULATE=1)")
    add("--no-trace", action="store_true", help="do not start the tracer even where it could run")
    add("--interval", type=float, default=_env("INTERVAL"),
        help="seconds between the tracer's reports (env PHOBOS_INTERVAL; default %(default)s)")
    add("--sim-areas", type=int, default=_env("UP_SIM_AREAS"),
        help="simulated business areas (default %(default)s)")
    add("--sim-services", type=int, default=_env("UP_SIM_SERVICES"),
        help="simulated services (default %(default)s)")
    add("--sim-instances", type=int, default=_env("UP_SIM_INSTANCES"),
        help="simulated instances (default %(default)s)")
    add("--sim-history", default=_env("SIM_HISTORY"),
        help="simulated history written before going live, e.g. -1h, -24h (default %(default)s)")
    add("--sim-interval", type=int, default=_env("SIM_INTERVAL"),
        help="seconds per simulated interval (default %(default)s)")


def tracing_problems() -> list[str]:
    """Why the tracer cannot run here (empty when it can)."""
    try:
        from tracer import preflight
    except ImportError as err:  # an API-only installation
        return [f"the tracer is not installed ({err})"]
    return [f"{p.what} (fix: {p.fix})" for p in preflight.run_checks()]


class _Simulator(threading.Thread):
    """A simulated fleet: backfill the history, then one interval at a time on the wall clock."""

    def __init__(self, store: Store, args: argparse.Namespace) -> None:
        super().__init__(name="phobos-up-simulate", daemon=True)
        self.store = store
        self.args = args
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.intervals = 0

    def run(self) -> None:
        from api.simulation import simulate
        from api.simulation.fleet import build_fleet

        try:
            sim_args = simulate.build_parser().parse_args([
                "--areas", str(self.args.sim_areas), "--services", str(self.args.sim_services),
                "--instances", str(self.args.sim_instances), "--from", self.args.sim_history,
                "--to", "now", "--interval", str(self.args.sim_interval)])
            cfg = simulate.config_from_args(sim_args)
            fleet = build_fleet(cfg)
            summary = simulate.simulate(self.store, cfg, fleet=fleet, stop=self.stop)
            print(f"simulate: {summary.describe()} in {summary.seconds:.1f} s; now live every "
                  f"{cfg.interval} s", file=sys.stderr, flush=True)

            def count(_ts: int, _records: int) -> None:
                self.intervals += 1

            simulate.write_live(self.store, fleet, cfg.end, self.stop, count)
        except BaseException as err:  # reported by the main thread
            self.error = err
            log.exception("the simulator stopped")


def _start_tracer(args: argparse.Namespace, url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tracer.agent", "--sink", url, "--interval", str(args.interval),
           "--metrics-port", "0"]
    # Its own session: Ctrl-C reaches phobos up, which stops the tracer in order
    # (the tracer's last drain still finds the API up).
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)


def _watch_tracer(proc: subprocess.Popen, stop: threading.Event) -> None:
    """Say so when the tracer ends on its own; the API and UI keep serving."""
    code = proc.wait()
    if not stop.is_set():
        print(f"phobos up: the tracer exited with status {code} (its messages are above); "
              f"the API and UI keep running without it", file=sys.stderr, flush=True)


def _stop_tracer(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print("phobos up: the tracer did not stop in time; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> int:
    """Start everything, serve until Ctrl-C/SIGTERM, stop in order; returns the exit status."""
    from werkzeug.serving import make_server

    from api.app import create_app, start_resolution
    from api.storage import StoreError, open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per request would bury what matters (the URL, tracer and simulator messages).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    data = Path(args.data).expanduser().resolve()
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"phobos up: cannot create the data directory {data}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        store = open_store(f"chdb://{data}", role="phobos up")
    except StoreError as err:
        print(f"phobos up: {err}", file=sys.stderr)
        return 2
    server = tracer = sim = resolver = None
    try:
        for change in store.migrate():
            print(change, file=sys.stderr)
        app = create_app({"STORE": store, "BIND_HOST": args.host})
        resolver = start_resolution(app, store)
        try:
            server = make_server(args.host, args.port, app, threaded=True)
        except OSError as err:
            print(f"phobos up: cannot listen on {args.host}:{args.port}: {err.strerror or err} "
                  f"(use --port)", file=sys.stderr)
            return 2
        port = server.server_port
        local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        url = f"http://{'[' + local + ']' if ':' in local else local}:{port}"

        stop = threading.Event()
        sources = []
        if args.no_trace:
            print("phobos up: tracing off (--no-trace)", file=sys.stderr)
        else:
            problems = tracing_problems()
            if problems:
                print("phobos up: tracing this host is off:", file=sys.stderr)
                for problem in problems:
                    print(f"  - {problem}", file=sys.stderr)
                if not args.simulate:
                    print("  To explore the UI anyway, run `phobos up --simulate` (a simulated live fleet, "
                          "no privileges needed).", file=sys.stderr)
            else:
                tracer = _start_tracer(args, url)
                sources.append(f"tracing this host every {args.interval:g} s (tracer pid {tracer.pid})")
                threading.Thread(target=_watch_tracer, args=(tracer, stop), name="phobos-up-tracer",
                                 daemon=True).start()
        if args.simulate:
            sim = _Simulator(store, args)
            sim.start()
            sources.append(f"simulating {args.sim_services} services in {args.sim_areas} areas")

        def shut_down() -> None:
            # The tracer first, while the API still takes its last batch.
            _stop_tracer(tracer)
            server.shutdown()

        def on_signal(signum: int, _frame: Any) -> None:
            if not stop.is_set():
                stop.set()
                threading.Thread(target=shut_down, name="phobos-up-stop", daemon=True).start()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        print(f"Phobos is up: open {url}/", flush=True)
        print(f"  data   {data}", flush=True)
        print(f"  source {'; '.join(sources) if sources else 'none (ingest at ' + url + '/api/v1/ingest)'}",
              flush=True)
        print("  Ctrl-C stops everything; the data is kept.", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("phobos up: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        _stop_tracer(tracer)
        if sim is not None:
            sim.stop.set()
            sim.join(60)
        if server is not None:
            server.server_close()
        if resolver is not None:
            resolver.stop()
        store.close()
        print(f"phobos up: stopped; data kept in {data}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phobos up")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
