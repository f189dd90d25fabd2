"""Valid records for tests; override any field by keyword."""

from __future__ import annotations

from tracer.records import VERSION, format_ts

import time

# An hour boundary a few hours ago: recent enough that the tables' TTL keeps
# the rows (expired parts are dropped as soon as they are written).
T0 = int(time.time()) // 3600 * 3600 - 6 * 3600

# The end of a simulated stretch that looks the same whenever tests run: the
# simulator's short-lived traffic follows a diurnal curve, lowest around
# 03:00 UTC (api/simulation/simulate.py), so a stretch ending "an hour ago"
# has a tenth of the connects at night, and an incident's failing edge can
# fall under the health rule's minimum. The last 18:00 UTC at least an hour
# ago keeps the busy afternoon in view and stays well inside the retention.
BUSY_END = (int(time.time()) - 3600 - 18 * 3600) // 86400 * 86400 + 18 * 3600


def connection(**overrides):
    record = dict(
        v=VERSION, ts=format_ts(T0 + 60), interval_s=10, dc="dc1", host="host-a", host_ip="10.0.0.1",
        netns=4026531840, pid=100, comm="curl", service="frontend", container_id="", pod="", namespace="",
        direction="outbound", local_ip="10.0.0.1", local_port=0, remote_ip="10.0.0.2", remote_port=8080,
        connects=1, accepts=0, closes=1, failures=0, open=0, duration_ms_sum=5, bytes_sent=0, bytes_received=0,
    )
    record.update(overrides)
    return record


def listener(**overrides):
    record = dict(
        v=VERSION, ts=format_ts(T0 + 60), dc="dc1", host="host-b", ip="10.0.0.2", port=8080, pid=200,
        comm="nginx", service="web", container_id="", pod="", namespace="",
    )
    record.update(overrides)
    return record
