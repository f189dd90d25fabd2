"""The one live loop (``api.simulation.simulate.write_live``) that ``phobos simulate --live`` and ``phobos up --simulate`` run.

A store that only counts inserts stands in for chDB: what is tested is which
intervals are written and when the loop stops, not how they are stored.
"""

from __future__ import annotations

import threading
import time

from api.simulation import simulate
from api.simulation.fleet import SimConfig, build_fleet


class CountingStore:
    def __init__(self) -> None:
        self.inserts: list[tuple[str, int]] = []

    def insert_arrow(self, kind: str, table, dedup_token: str | None = None) -> int:
        self.inserts.append((kind, table.num_rows))
        return table.num_rows


def fleet(interval: int = 1):
    now = int(time.time())
    return build_fleet(SimConfig(areas=1, services=2, instances=3, dcs=1, start=now - 10, end=now,
                                 interval=interval).check())


def run_until(store, f, last, intervals):
    stop = threading.Event()
    written: list[tuple[int, int]] = []

    def report(ts: int, records: int) -> None:
        written.append((ts, records))
        if len(written) == intervals:
            stop.set()

    count = simulate.write_live(store, f, last, stop, report)
    return count, written


def test_writes_each_interval_after_the_last_one_on_the_wall_clock():
    f = fleet()
    store = CountingStore()
    last = int(time.time())
    started = time.monotonic()
    count, written = run_until(store, f, last, 2)
    assert count == 2 and [ts for ts, _ in written] == [last + 1, last + 2]
    assert all(records > 0 for _, records in written)
    assert sum(n for _, n in store.inserts) == sum(records for _, records in written)
    assert 0.5 < time.monotonic() - started < 5  # it waited for the intervals to end


def test_far_behind_goes_on_from_now_instead_of_backfilling():
    f = fleet()
    store = CountingStore()
    before = int(time.time())
    _, written = run_until(store, f, before - 3600, 1)
    assert before - 2 <= written[0][0] <= time.time()


def test_a_set_stop_writes_nothing():
    stop = threading.Event()
    stop.set()
    store = CountingStore()
    assert simulate.write_live(store, fleet(), int(time.time()), stop) == 0 and not store.inserts
