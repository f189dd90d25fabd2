"""Benchmark: backfill 24 h of the 500-service / 5000-instance fleet at 60 s.

Goal: at most 5 minutes on a 2-core machine.  Prints, from one run: the time
to build the fleet, the time to generate the records alone (no store), and
the time of the full backfill into a fresh embedded store (generation
overlapped with chDB inserts, including the rollup views), records and
records/s, and the peak RSS of the process.

Run:  python tests/bench/bench_simulate.py [--hours 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from api.storage import open_store  # noqa: E402
from api.simulation.simulate import SimConfig, build_fleet, default_progress, generate, simulate  # noqa: E402
from api.simulation.simulate import _interval_ends  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--areas", type=int, default=30)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--hours", type=float, default=24)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--keep", metavar="DIR", help="use (and keep) this store directory")
    parser.add_argument("--skip-generate-only", action="store_true")
    args = parser.parse_args()

    end = int(time.time())
    cfg = SimConfig(args.areas, args.services, args.instances, 2, end - int(args.hours * 3600), end,
                    args.interval, 1).check()
    t0 = time.monotonic()
    fleet = build_fleet(cfg)
    t_build = time.monotonic() - t0
    print(f"fleet: {len(fleet.svc_name)} services, {fleet.n_instances} instances, {len(fleet.edges)} edges, "
          f"{len(fleet.p_kind)} pairs, {len(fleet.epochs)} epochs; built in {t_build:.2f} s")

    if not args.skip_generate_only:
        t0 = time.monotonic()
        rows = sum(b.table.num_rows for b in generate(fleet, _interval_ends(cfg)))
        t_gen = time.monotonic() - t0
        print(f"generate only: {rows:,} records in {t_gen:.1f} s = {rows / t_gen:,.0f} records/s")

    directory = args.keep or tempfile.mkdtemp(prefix="phobos-bench-")
    try:
        with open_store(f"chdb:///{directory}?database=bench", role="bench") as store:
            store.migrate()
            t0 = time.monotonic()
            summary = simulate(store, cfg, default_progress(), fleet=fleet)
            t_all = time.monotonic() - t0
            counts = store.query(
                f"SELECT (SELECT count() FROM {store.db}.connections), (SELECT count() FROM {store.db}.listeners)")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        total = summary.total
        print(f"backfill {args.hours:g} h x {args.instances} instances at {args.interval} s: "
              f"{summary.records['connections']:,} connections + {summary.records['listeners']:,} listeners "
              f"= {total:,} records in {t_all:.1f} s = {total / t_all:,.0f} records/s; "
              f"stored {counts[0][0]:,} + {counts[0][1]:,}; peak RSS {rss_mb:,.0f} MiB; "
              f"goal <= 300 s: {'met' if t_all <= 300 else 'MISSED'}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
