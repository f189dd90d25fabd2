"""Prerequisite checks for the tracer, each with a message that says the fix.

What it checks, in order: privileges (root, or CAP_BPF + CAP_PERFMON, or
CAP_SYS_ADMIN), BCC's Python module, the kernel's version (5.12 or later:
the program claims socket-table entries with BPF compare-and-swap), kernel
headers for the running kernel (BCC compiles against
``/lib/modules/$(uname -r)/build``), tracefs mounted,
the ``sock:inet_sock_set_state`` tracepoint, and kernel BTF (for the struct
offsets).  Each check is a function of paths and values so tests can point
it at fake directories; ``run_checks`` collects every problem at once so an
operator fixes them in one round.

Environment overrides, for tests and unusual hosts: ``PHOBOS_TRACEFS``
(tracefs mount point), ``PHOBOS_MODULES_DIR`` (instead of /lib/modules),
``PHOBOS_BTF`` (instead of /sys/kernel/btf/vmlinux).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

from tracer.settings import TRACER_SETTINGS

__all__ = ["Problem", "check_privileges", "check_bcc", "check_kernel", "check_headers", "check_tracefs",
           "check_tracepoint", "check_btf", "run_checks", "effective_caps", "format_problems"]

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_SYS_RESOURCE = 24
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
#: BPF atomics (compare-and-swap, exchange) on map values: Linux 5.12.
MIN_KERNEL = (5, 12)


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}"


def effective_caps(status_path: str = "/proc/self/status") -> set[int]:
    """Capability numbers in the CapEff line of a /proc status file."""
    try:
        with open(status_path) as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    mask = int(line.split()[1], 16)
                    return {bit for bit in range(64) if mask >> bit & 1}
    except OSError:
        pass
    return set()


def check_privileges(euid: int, caps: set[int]) -> Problem | None:
    if euid == 0 and (CAP_SYS_ADMIN in caps or {CAP_BPF, CAP_PERFMON} <= caps):
        return None
    if CAP_SYS_ADMIN in caps or {CAP_BPF, CAP_PERFMON} <= caps:
        return None
    missing = [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if bit not in caps]
    return Problem(
        f"not enough privileges (euid {euid}, missing {' and '.join(missing)})",
        "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE "
        "(e.g. sudo setcap or a privileged container / DaemonSet securityContext)",
    )


def check_bcc(importer: Callable[[], object] | None = None) -> Problem | None:
    def default() -> object:
        from tracer.probe import import_bcc  # noqa: PLC0415 - keeps bcc out of this module
        return import_bcc()

    try:
        (importer or default)()
        return None
    except Exception:  # ProbeError or ImportError
        return Problem("BCC is not installed (Python module 'bcc' not found)",
                       "apt-get install python3-bpfcc bpfcc-tools (never 'pip install bcc', an unrelated package)")


def check_kernel(release: str) -> Problem | None:
    """Linux 5.12 or later; a release that does not start with a version is let through."""
    parts = release.split("-", 1)[0].split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None
    if version >= MIN_KERNEL:
        return None
    return Problem(f"kernel {release} is too old: the tracer's BPF program uses atomic compare-and-swap "
                   "on map values (Linux 5.12 or later)", "run a kernel of version 5.12 or later")


def check_headers(release: str, modules_dir: str = "/lib/modules") -> Problem | None:
    build = os.path.join(modules_dir, release, "build")
    if os.path.isdir(os.path.join(build, "include")) or os.path.isdir(build):
        return None
    return Problem(f"no kernel headers for the running kernel ({build} is missing)",
                   f"apt-get install linux-headers-{release}")


def find_tracefs(candidates: Iterable[str] = TRACEFS_CANDIDATES) -> str | None:
    for path in candidates:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def check_tracefs(candidates: Iterable[str] = TRACEFS_CANDIDATES) -> Problem | None:
    candidates = tuple(candidates)
    if find_tracefs(candidates) is not None:
        return None
    for path in candidates:
        # tracefs is mode 0700: to other users a mounted one looks empty.
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            return Problem(f"tracefs at {path} is not readable by this user",
                           "run as root (tracefs is only readable by root)")
    return Problem("tracefs is not mounted (no events/ under " + " or ".join(candidates) + ")",
                   "mount -t tracefs tracefs /sys/kernel/tracing")


def check_tracepoint(tracefs: str, category: str = "sock", event: str = "inet_sock_set_state") -> Problem | None:
    if os.path.isdir(os.path.join(tracefs, "events", category, event)):
        return None
    return Problem(f"tracepoint {category}:{event} is missing from {tracefs}/events",
                   "a kernel >= 4.16 built with CONFIG_TRACEPOINTS and CONFIG_INET is required")


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> Problem | None:
    if os.path.exists(path):
        return None
    return Problem(f"kernel BTF is missing ({path})",
                   "a kernel built with CONFIG_DEBUG_INFO_BTF=y is required to find struct offsets")


def run_checks(
    *,
    euid: int | None = None,
    caps: set[int] | None = None,
    release: str | None = None,
    modules_dir: str | None = None,
    tracefs_candidates: Iterable[str] | None = None,
    btf_path: str | None = None,
    bcc_importer: Callable[[], object] | None = None,
) -> list[Problem]:
    """Every problem that stops the tracer; empty when it can start."""
    euid = os.geteuid() if euid is None else euid
    caps = effective_caps() if caps is None else caps
    release = os.uname().release if release is None else release
    modules_dir = modules_dir or TRACER_SETTINGS.value("MODULES_DIR")
    if tracefs_candidates is None:
        tracefs = TRACER_SETTINGS.value("TRACEFS")
        tracefs_candidates = (tracefs,) if tracefs else TRACEFS_CANDIDATES
    tracefs_candidates = tuple(tracefs_candidates)
    btf_path = btf_path or TRACER_SETTINGS.value("BTF")
    problems = [
        check_privileges(euid, caps),
        check_bcc(bcc_importer),
        check_kernel(release),
        check_headers(release, modules_dir),
        check_tracefs(tracefs_candidates),
    ]
    tracefs = find_tracefs(tracefs_candidates)
    if tracefs is not None:
        problems.append(check_tracepoint(tracefs))
    problems.append(check_btf(btf_path))
    return [p for p in problems if p is not None]


def format_problems(problems: list[Problem]) -> str:
    lines = ["phobos trace cannot start:"]
    for p in problems:
        lines += [f"  - {p.what}", f"    fix: {p.fix}"]
    return "\n".join(lines)
