"""Benchmark of the Phobos tracer on a loopback connect/close workload.

Run as root from the repository root:

    .venv/bin/python tests/bench/bench_tracer.py [--seconds 10] [--rounds 6] [--interval 10]

What it measures, in one run, and prints as ratios and figures:
- connection throughput with and without the tracer, which drains at its
  default interval (rounds alternate their order so drift and the faster
  second run of a pair hit both sides; goal: ratio >= 0.97), and with the
  program alone on the hook, attached in alternating half-second slices of
  one running workload beside an empty program and none (what separate
  rounds differ by, the host's other work from one 10 s to the next, cancels
  out there);
- in-kernel cost with kernel.bpf_stats_enabled: mean run time of the
  tracer's programs per state change and per connection (goals: <= 100 ns
  and <= 600 ns), beside the same figures for an empty program on the same
  hook - what the kernel's own accounting costs per run on this host, which
  the tracer's figures include;
- tracer CPU (user+sys of the agent process from /proc/PID/stat) per 10k
  connections, and its RSS (goal <= 120 MB steady);
- start-up time to the first record (a 1 s interval for that);
- exactness: records' connects == the workload's own count, kernel map drops;
- health of those connections: handshakes timed (one per connect), their
  p50/p95, retransmits (0 on loopback) and aborts (every client resets);
- bytes of connections that stay open: the held connections of the /proc
  comparison each send 1000 bytes, which the drains must report exactly
  while they are open, and the time the drain spends reading them;
- BCC's tcpconnect/tcpaccept (kprobe-based) on the same kernel, or their error;
- reading /proc/net/tcp{,6} with 10k open sockets vs one tracer drain.

The workload only talks to 127.0.0.1, stops by itself after --seconds, and
closes its client sockets with RST (SO_LINGER 0) so thousands of connections
per second do not exhaust ephemeral ports through TIME_WAIT.
Not collected by pytest (no test_ functions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer import records  # noqa: E402
from tracer.settings import TRACER_SETTINGS  # noqa: E402

LINGER_RST = struct.pack("ii", 1, 0)


def _server(port_q: mp.Queue, stop: mp.Event) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    srv.settimeout(0.2)
    port_q.put(srv.getsockname()[1])
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        conn.close()


def _client(port: int, seconds: float, out: mp.Queue | None, shared_count=None) -> None:
    """Connect and reset for ``seconds``; the counts go to ``out`` at the end, and each
    connect to ``shared_count`` (a shared value) as it happens when one is given."""
    done = 0
    failed = 0
    end = time.monotonic() + seconds
    addr = ("127.0.0.1", port)
    while time.monotonic() < end:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        try:
            s.connect(addr)
            done += 1
            if shared_count is not None:
                shared_count.value += 1
        except OSError:
            failed += 1
        s.close()
    if out is not None:
        out.put((os.getpid(), done, failed))


def workload(seconds: float, clients: int = 1) -> dict:
    """Connect/close to a loopback server as fast as possible for ``seconds``."""
    port_q, out, stop = mp.Queue(), mp.Queue(), mp.Event()
    server = mp.Process(target=_server, args=(port_q, stop))
    server.start()
    port = port_q.get(timeout=10)
    procs = [mp.Process(target=_client, args=(port, seconds, out)) for _ in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    stop.set()
    server.join()
    return {"pids": [r[0] for r in results], "connects": sum(r[1] for r in results),
            "failed": sum(r[2] for r in results), "seconds": elapsed, "server_port": port}


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


class Tracer:
    def __init__(self, metrics_port: int, mode: str = "auto", interval: float = 1.0) -> None:
        self.t0 = time.monotonic()
        self.records: list[dict] = []
        self.first_record_s = None
        self.ready_s = None
        self.stderr: list[str] = []
        self.metrics_port = metrics_port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracer.agent", "--interval", str(interval), "--mode", mode,
             "--metrics-port", str(metrics_port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        if not self._ready.wait(60):
            raise SystemExit("tracer did not start:\n" + "".join(self.stderr))

    def _out(self) -> None:
        for line in self.proc.stdout:
            if self.first_record_s is None:
                self.first_record_s = time.monotonic() - self.t0
            self.records.append(json.loads(line))

    def _err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "tracing (mode" in line:
                self.ready_s = time.monotonic() - self.t0
                self._ready.set()

    def metric(self, name: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def wait_first_record(self, timeout: float = 30) -> None:
        """Until the first record (the first drain that found something)."""
        end = time.monotonic() + timeout
        while self.first_record_s is None and time.monotonic() < end:
            time.sleep(0.05)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        time.sleep(0.2)
        for line in self.stderr:
            if line.startswith("phobos-trace-summary "):
                return json.loads(line.split(" ", 1)[1])
        return {}


def prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs the process holds (from fdinfo)."""
    total_ns = total_cnt = 0
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as fh:
                info = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if "prog_type" in info and "run_cnt" in info:
            total_ns += int(info["run_time_ns"])
            total_cnt += int(info["run_cnt"])
    return total_ns, total_cnt


class _BpfStats:
    """kernel.bpf_stats_enabled on for the duration of a ``with`` block."""

    path = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        with open(self.path) as fh:
            self.old = fh.read().strip()
        with open(self.path, "w") as fh:
            fh.write("1")
        return self

    def __exit__(self, *exc):
        with open(self.path, "w") as fh:
            fh.write(self.old)


def _cost(ns: int, events: int, w: dict) -> dict:
    per_conn_ns = ns / max(1, w["connects"])
    wall_per_conn_ns = w["seconds"] * 1e9 / max(1, w["connects"])
    return {"events": events, "ns_per_event": ns / max(1, events), "ns_per_conn": per_conn_ns,
            "events_per_conn": events / max(1, w["connects"]), "conns": w["connects"],
            "share": per_conn_ns / wall_per_conn_ns, "rate": w["connects"] / w["seconds"]}


def in_kernel_cost(seconds: float) -> dict:
    """BPF run time per event and per connection, with kernel.bpf_stats_enabled on for the round.

    Unlike the throughput ratio this does not depend much on what else the
    host runs; events from other processes' TCP traffic are included.
    """
    with _BpfStats():
        tracer = Tracer(free_port(), mode="tracepoint")
        try:
            tracer.wait_first_record()
            ns0, cnt0 = prog_stats(tracer.proc.pid)
            w = workload(seconds)
            ns1, cnt1 = prog_stats(tracer.proc.pid)
        finally:
            tracer.stop()
    out = _cost(ns1 - ns0, cnt1 - cnt0, w)
    out["hook"] = next((line.split("state changes from ", 1)[1].split(")")[0].split(" ")[0]
                        for line in tracer.stderr if "state changes from " in line), "?")
    return out


EMPTY_PROGRAM = (b"int phobos_empty(u64 *ctx) { return 0; }\n"
                 b"int phobos_empty_raw(struct bpf_raw_tracepoint_args *ctx) { return 0; }\n")


@contextlib.contextmanager
def _program_on_hook(text: bytes | None = None, src_file: str | None = None):
    """A program compiled from ``text`` or ``src_file``, loaded for the tracer's hook without the agent.

    Yields ``attach()``, which attaches it (BTF-typed, or plain where
    refused) and returns a function that detaches it, and ``stats()``,
    its (run_time_ns, run_cnt).  A stack named edge_free is filled with
    ids, as the agent does.
    """
    import ctypes as ct

    from tracer import probe

    fn, raw_fn = (b"phobos_empty", b"phobos_empty_raw") if text is not None else \
        (b"phobos_state_btf", b"phobos_state_raw")
    bcc = probe.import_bcc()
    offsets = probe.kernel_offsets(probe.read_btf())
    if text is not None:
        bpf = bcc.BPF(text=text)
    else:
        bpf = bcc.BPF(src_file=src_file.encode(), cflags=offsets.cflags() + ["-w"])
    prog_fd = None
    try:
        try:
            free = bpf["edge_free"]
        except KeyError:  # a version of the program without edge ids
            free = None
        for i in range(free.max_entries - 1 if free is not None else 0, 0, -1):
            free.push(ct.c_uint32(i))
        # As the probe loads it: the kfunc cast, else the helper, else the plain hook.
        casts = (offsets.rdonly_cast_btf_id, 0) if offsets.rdonly_cast_btf_id and offsets.tcp_sock_btf_id else (0,)
        for cast in casts if offsets.state_tp_btf_id else ():
            try:
                prog_fd = probe._load_tracing(probe.link_tcp_sock_casts(bpf.dump_func(fn), cast),
                                              offsets.state_tp_btf_id, fn.decode()[:15], probe._BPF_TRACE_RAW_TP)
                break
            except probe.ProbeError:
                continue
        if prog_fd is not None:
            stats_fd = prog_fd

            def attach():
                nonlocal prog_fd
                try:
                    link = probe._attach_tracing(prog_fd)
                except probe.ProbeError:
                    prog_fd = None  # closed by _attach_tracing when it fails
                    raise
                return lambda: os.close(link)
        else:
            stats_fd = bpf.load_func(raw_fn, bcc.BPF.RAW_TRACEPOINT).fd

            def attach():
                bpf.attach_raw_tracepoint(tp=probe.STATE_TRACEPOINT.encode(), fn_name=raw_fn)
                return lambda: bpf.detach_raw_tracepoint(tp=probe.STATE_TRACEPOINT.encode())

        def stats() -> tuple[int, int]:
            with open(f"/proc/self/fdinfo/{stats_fd}") as fh:
                info = dict(line.split(":", 1) for line in fh if ":" in line)
            return int(info["run_time_ns"]), int(info["run_cnt"])

        yield attach, stats
    finally:
        if prog_fd is not None:
            os.close(prog_fd)
        bpf.cleanup()


def _hook_cost(seconds: float, text: bytes | None = None, src_file: str | None = None) -> dict:
    """One workload round with a program alone on the tracer's hook: no drains, no attribution,
    just its run time per state change."""
    with _program_on_hook(text, src_file) as (attach, stats):
        detach = attach()
        try:
            with _BpfStats():
                ns0, cnt0 = stats()
                w = workload(seconds)
                ns1, cnt1 = stats()
        finally:
            detach()
    return _cost(ns1 - ns0, cnt1 - cnt0, w)


def sliced_throughput(seconds: float, slice_s: float = 0.5) -> dict[str, float]:
    """Throughput with this program, an empty one, or none on the hook, in turns of ``slice_s``
    under one running workload: the programs' own effect on throughput, without what separate
    rounds differ by (forks, start-ups, the host's other work from one 10 s to the next).

    Returns each one's connections per second over its slices, relative to none."""
    from tracer import probe

    done = mp.RawValue("q", 0)
    port_q, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=_server, args=(port_q, stop))
    server.start()
    rates: dict[str, list[float]] = {"this": [], "empty": [], "none": []}
    try:
        port = port_q.get(timeout=10)
        with _program_on_hook(src_file=probe.BPF_SOURCE) as (this, _), \
                _program_on_hook(text=EMPTY_PROGRAM) as (empty, _):
            client = mp.Process(target=_client, args=(port, seconds + 5, None, done))
            client.start()
            time.sleep(1)
            attach = {"this": this, "empty": empty, "none": lambda: (lambda: None)}
            end, turn = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                names = list(attach) if turn % 2 == 0 else list(attach)[::-1]
                turn += 1
                for name in names:
                    detach = attach[name]()
                    c0, t0 = done.value, time.monotonic()
                    time.sleep(slice_s)
                    c1, t1 = done.value, time.monotonic()
                    detach()
                    rates[name].append((c1 - c0) / (t1 - t0))
            client.join()
    finally:
        stop.set()
        server.join()
    base = statistics.mean(rates["none"])
    return {name: statistics.mean(r) / base for name, r in rates.items()} | {"slices": len(rates["none"]),
                                                                              "rate": base}


def empty_program_cost(seconds: float) -> dict:
    """The same round with an empty program on the tracer's hook: the floor of the accounting itself.

    bpf_stats reads the clock twice around each run; on a virtual machine
    that alone can be tens of ns, which every program's figure includes.
    """
    return _hook_cost(seconds, text=EMPTY_PROGRAM)


def compare_programs(seconds: float, rounds: int, other: str) -> dict:
    """Run time of this tracer's program against another version of it (``other``: a .c file),
    each alone on the hook, in alternating rounds; and of an empty program beside them."""
    from tracer import probe

    out: dict[str, list] = {"this": [], "other": [], "empty": []}
    for rnd in range(rounds):
        order = [("this", probe.BPF_SOURCE), ("other", other)]
        for name, src in (order if rnd % 2 == 0 else order[::-1]):
            out[name].append(_hook_cost(seconds, src_file=src))
        out["empty"].append(empty_program_cost(seconds))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcc_tool(path: str) -> str:
    if not os.path.exists(path):
        return f"{path} not installed"
    try:
        proc = subprocess.run([path], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "ran (did not exit within 20 s: it attached)"
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return f"exit {proc.returncode}: " + (lines[-1] if lines else "(no output)")


def proc_net_cost(n_conns: int, tracer_port: int) -> dict:
    """Hold n_conns loopback connections open (2 sockets each) and time both ways of counting them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n_conns + 100
    if hard != resource.RLIM_INFINITY and hard < want:
        n_conns = (hard - 100) // 2
        want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    from tracer.attribution import parse_proc_net_tcp

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    held = []
    for _ in range(n_conns):
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        held += [c, a]
    tracer = Tracer(tracer_port, mode="tracepoint", interval=1.0)
    try:
        times = []
        count = 0
        for _ in range(5):
            t = time.perf_counter()
            socks = []
            for name in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(name) as fh:
                    socks += parse_proc_net_tcp(fh.read())
            times.append(time.perf_counter() - t)
            count = len(socks)
        tracer.wait_first_record()
        time.sleep(1.2)
        drain = tracer.metric("phobos_tracer_last_drain_duration_seconds")
        open_read = tracer.metric("phobos_tracer_open_bytes_last_duration_seconds")
        open_now = tracer.metric("phobos_tracer_open_connections")
        # Each held connection now sends a known amount: the drains must
        # report it while the connections stay open (they predate the
        # tracer, so their bytes count from the first drain that saw them).
        n_bytes = 1000
        payload = b"b" * n_bytes
        for c in held[0::2]:
            c.sendall(payload)
        for a in held[1::2]:
            got = 0
            while got < n_bytes:
                got += len(a.recv(65536))
        time.sleep(2.5)
        reported = sum(r.get("bytes_sent", 0) for r in tracer.records
                       if r.get("direction") == "outbound" and r["remote_port"] == port)
        received = sum(r.get("bytes_received", 0) for r in tracer.records
                       if r.get("direction") == "inbound" and r["local_port"] == port)
    finally:
        tracer.stop()
        for s in held:
            s.close()
        srv.close()
    return {"sockets": count, "proc_read_s": statistics.median(times), "drain_s": drain, "tracer_open": open_now,
            "open_read_s": open_read, "open_bytes_sent": n_bytes * n_conns, "open_bytes_reported": reported,
            "open_bytes_received": received}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one workload round")
    ap.add_argument("--interval", type=float, default=TRACER_SETTINGS["INTERVAL"].default,
                    help="the tracer's drain interval in the throughput rounds (its default: %(default)s s)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds with and without the tracer (alternating order)")
    ap.add_argument("--sliced", type=float, default=60.0,
                    help="seconds of the workload whose slices alternate this program, an empty one and none")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between the tracer's start-up and a traced round (start-up is timed on its own)")
    ap.add_argument("--open-sockets", type=int, default=5000, help="connections held for the /proc comparison")
    ap.add_argument("--compare", metavar="FILE.c",
                    help="also time another version of tracer/bpf/phobos.c (e.g. from git show REV:tracer/bpf/phobos.c) "
                         "against this one, each alone on the hook, in alternating rounds")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_tracer: needs root (BPF)", file=sys.stderr)
        return 2

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"# phobos tracer benchmark  kernel {os.uname().release}  cpus {os.cpu_count()}  "
          f"loadavg before {' '.join(load)} (other work on the host makes throughput noisy)")
    base_rates, traced_rates = [], []
    cpu_per_10k, exact, health = [], [], []
    rss = (0, 0)
    summary = {}
    tracer = Tracer(free_port(), mode="auto", interval=1.0)
    tracer.wait_first_record()
    startup = (tracer.ready_s, tracer.first_record_s)
    tracer.stop()
    workload(1.0)  # warm-up: the first workload of a run is the slowest (forks, page cache)
    for rnd in range(args.rounds):
        # Odd rounds run without the tracer first, even ones after it: the
        # second workload of a pair runs measurably faster than the first
        # (about 4 % here, without any tracer), and alternating the order
        # cancels that from the median of the pairs.
        if rnd % 2 == 0:
            w = workload(args.seconds)
            base_rates.append(w["connects"] / w["seconds"])

        port = free_port()
        tracer = Tracer(port, mode="auto", interval=args.interval)
        # What is left of the start-up once the agent says it traces (its
        # threads starting, the compiler's pages going) is not what it costs
        # a host in steady state.
        time.sleep(args.settle)
        ticks0 = cpu_ticks(tracer.proc.pid)
        w = workload(args.seconds)
        ticks = cpu_ticks(tracer.proc.pid) - ticks0
        rss = max(rss, rss_kb(tracer.proc.pid))
        mode = tracer.metric("phobos_tracer_info")
        summary = tracer.stop()  # drains what the last interval counted
        traced_rates.append(w["connects"] / w["seconds"])
        if rnd % 2 == 1:
            w_base = workload(args.seconds)
            base_rates.append(w_base["connects"] / w_base["seconds"])
        cpu_s = ticks / os.sysconf("SC_CLK_TCK")
        cpu_per_10k.append(cpu_s / max(1, w["connects"]) * 10_000)
        seen = sum(r["connects"] for r in tracer.records
                   if r.get("direction") == "outbound" and r["pid"] in w["pids"]
                   and r["remote_port"] == w["server_port"])
        accepted = sum(r["accepts"] for r in tracer.records
                       if r.get("direction") == "inbound" and r["local_port"] == w["server_port"])
        exact.append((w["connects"], w["failed"], seen, accepted, summary.get("map_drops")))
        mine = [r for r in tracer.records if r.get("direction") == "outbound" and r["pid"] in w["pids"]
                and r["remote_port"] == w["server_port"]]
        hist = [0] * records.HANDSHAKE_BUCKETS
        for r in mine:
            hist = records.add_handshake_hists(hist, r.get("handshake_hist") or [])
        health.append((seen, sum(r.get("handshakes", 0) for r in mine), hist,
                       sum(r.get("retransmits", 0) for r in mine), sum(r.get("aborts", 0) for r in mine)))
        print(f"round {rnd + 1}: without {base_rates[-1]:.0f}/s  with {traced_rates[-1]:.0f}/s  "
              f"tracer cpu {cpu_s:.2f}s for {w['connects']} conns  mode={summary.get('mode')} ({mode})")

    paired = [t / b for t, b in zip(traced_rates, base_rates)]
    print(f"throughput ratio (with/without tracer, draining every {args.interval:g} s): "
          f"median of rounds {statistics.median(paired):.3f} "
          f"(rounds {min(paired):.2f}..{max(paired):.2f}; medians {statistics.median(traced_rates):.0f} vs "
          f"{statistics.median(base_rates):.0f} connections/s; goal >= 0.97)")
    print(f"tracer CPU per 10k connections: {statistics.median(cpu_per_10k):.4f} s (user+sys of the agent, "
          f"clock tick {1 / os.sysconf('SC_CLK_TCK'):.2f} s; in-kernel BPF time is charged to the workload)")
    print(f"tracer RSS: {rss[0] / 1024:.1f} MB steady, peak {rss[1] / 1024:.1f} MB during the compile (goal <= 120 MB "
          f"steady; the compiler's pages are only released when no other process maps them)")
    print(f"start-up: ready after {startup[0]:.2f} s, first record after {startup[1]:.2f} s "
          f"(mode auto, 1 s interval)")
    for made, failed, seen, accepted, drops in exact:
        verdict = "exact" if made == seen and made == accepted else "MISMATCH"
        print(f"counts: workload connects {made} (+{failed} failed), records connects {seen}, "
              f"accepts {accepted}, map drops {drops} -> {verdict}")
    for seen, handshakes, hist, retransmits, aborts in health:
        p50, p95 = records.handshake_quantile(hist, 0.5), records.handshake_quantile(hist, 0.95)
        print(f"health: {handshakes} handshakes timed of {seen} connects, p50 {p50 or 0:.0f} us, p95 {p95 or 0:.0f} us; "
              f"retransmits {retransmits}; aborts {aborts} (every client closes with a reset: expected {seen})")
    print(f"kernel events in last round: {summary.get('kernel_events')}, userspace wake-ups: "
          f"{summary.get('wakeups')}, edges read: {summary.get('edges_read')}")
    cost_k = in_kernel_cost(args.seconds)
    floor = empty_program_cost(args.seconds)
    print(f"in-kernel cost (kernel.bpf_stats_enabled for one round, hook {cost_k['hook']}): "
          f"{cost_k['ns_per_event']:.0f} ns per state change, {cost_k['ns_per_conn']:.0f} ns per connection "
          f"(goals <= 100 and <= 600; {cost_k['events']} events, {cost_k['events_per_conn']:.2f} per connection, "
          f"{cost_k['conns']} connections at {cost_k['rate']:.0f}/s) = {cost_k['share'] * 100:.2f}% of the "
          f"wall time per connection -> throughput ratio bound >= {1 / (1 + cost_k['share']):.3f} on one core")
    print(f"  an empty program on the same hook: {floor['ns_per_event']:.0f} ns per state change, "
          f"{floor['ns_per_conn']:.0f} ns per connection (the accounting's own cost here, included above; "
          f"net of it the tracer costs {cost_k['ns_per_event'] - floor['ns_per_event']:.0f} ns per state change, "
          f"{cost_k['ns_per_conn'] - floor['ns_per_event'] * cost_k['events_per_conn']:.0f} ns per connection)")
    sliced = sliced_throughput(args.sliced)
    print(f"throughput with the program alone on the hook, in alternating {0.5:g} s slices of one "
          f"{args.sliced:g} s workload ({sliced['slices']} each, {sliced['rate']:.0f} connections/s without): "
          f"ratio {sliced['this']:.3f}, an empty program {sliced['empty']:.3f}")
    if args.compare:
        runs = compare_programs(args.seconds, 4, args.compare)

        def per(name: str, key: str) -> str:
            return "/".join(f"{r[key]:.0f}" for r in runs[name])

        med = {name: (statistics.median(r["ns_per_event"] for r in runs[name]),
                      statistics.median(r["ns_per_conn"] for r in runs[name])) for name in runs}
        net = {name: med[name][0] - med["empty"][0] for name in ("this", "other")}
        print(f"this program against {args.compare}, alternating, 4 rounds each: ns per state change "
              f"{per('this', 'ns_per_event')} against {per('other', 'ns_per_event')} (empty program "
              f"{per('empty', 'ns_per_event')}); ns per connection {per('this', 'ns_per_conn')} against "
              f"{per('other', 'ns_per_conn')}; medians' ratio {med['this'][0] / med['other'][0]:.2f}, "
              f"net of the empty program {net['this'] / max(net['other'], 1e-9):.2f}")
    print("BCC tcpconnect-bpfcc:", bcc_tool("/usr/sbin/tcpconnect-bpfcc"))
    print("BCC tcpaccept-bpfcc: ", bcc_tool("/usr/sbin/tcpaccept-bpfcc"))
    cost = proc_net_cost(args.open_sockets, free_port())
    print(f"/proc/net/tcp{{,6}} read+parse at {cost['sockets']} sockets: {cost['proc_read_s'] * 1000:.1f} ms; "
          f"one tracer drain: {cost['drain_s'] * 1000:.2f} ms (ratio {cost['proc_read_s'] / max(cost['drain_s'], 1e-9):.0f}x); "
          f"tracer open gauge {cost['tracer_open']:.0f}")
    print(f"open connections' totals (socket diagnostics, in that drain): {cost['open_read_s'] * 1000:.2f} ms; "
          f"{cost['open_bytes_sent']} bytes sent on the held connections while open, reported sent "
          f"{cost['open_bytes_reported']}, received {cost['open_bytes_received']} -> "
          f"{'exact' if cost['open_bytes_reported'] == cost['open_bytes_received'] == cost['open_bytes_sent'] else 'MISMATCH'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
