"""What the tracer's two netlink readers share: message framing and opening a socket in another network namespace.

``tracer.conntrack`` reads NAT translations (``NETLINK_NETFILTER``) and
``tracer.sockdiag`` reads the totals of open TCP sockets
(``NETLINK_SOCK_DIAG``); both walk dumps of ``nlmsghdr``-framed messages
and both may have to open their socket inside a namespace other than the
tracer's own.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from typing import Callable, Iterator, TypeVar

__all__ = ["NLMSG", "NLMSG_ERROR", "NLMSG_DONE", "NLM_F_REQUEST", "NLM_F_MULTI", "NLM_F_DUMP_INTR",
           "NLM_F_DUMP_FILTERED", "NLM_F_DUMP", "CLONE_NEWNET", "iter_messages", "in_netns"]

# <linux/netlink.h>
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_DUMP = 0x300
# <linux/sched.h>
CLONE_NEWNET = 0x40000000

NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid

T = TypeVar("T")


def iter_messages(buf, length: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, start, end) of each netlink message in ``buf[:length]``.

    ``start`` is the message's first byte, ``end`` one past its last; a
    truncated trailing message ends the iteration.
    """
    end_all = len(buf) if length is None else length
    off = 0
    while off + NLMSG.size <= end_all:
        mlen, mtype, mflags, _seq, _pid = NLMSG.unpack_from(buf, off)
        if mlen < NLMSG.size or off + mlen > end_all:
            return
        yield mtype, mflags, off, off + mlen
        off += (mlen + 3) & ~3


def in_netns(path: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the network namespace at ``path`` (None: here) and return its result.

    setns() moves only the calling thread, so a throwaway thread does it and
    the rest of the process stays where it was; sockets keep the namespace
    they were created in.
    """
    if path is None:
        return fn()
    result: dict = {}

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=run, name="phobos-netns", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
