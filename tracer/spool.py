"""A bounded, ordered on-disk queue of Kafka messages for broker outages.

What it holds: ``Spool``, a FIFO of (topic, key, value) messages stored in
segment files of one directory, each message with a sequence number and the
number of records it carries.

How: messages are appended to the newest segment (``<first seq>.seg``);
when it passes ``segment_bytes`` a new one starts.  Readers take messages in
sequence order from a read position; ``ack(seq)`` marks one delivered, and the
durable cursor (``cursor`` file) moves over the delivered prefix, deleting
segments that are wholly delivered; the cursor file also lists messages
delivered out of order beyond it.  After a restart everything undelivered
is replayed (a message whose delivery was not yet written down when the
process died is sent again - at-least-once).

Bounded: when the spool holds more than ``max_bytes``, whole oldest segments
are deleted and the records they held are added to ``dropped`` (and logged):
the oldest data goes first, and never silently.

Frames: ``>QIIHH`` (seq, records, value length, topic length, key length),
topic, key, value, then a CRC32 of all that.  A torn frame at the end of the
last segment (crash mid-write) is cut off at start-up.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Spool", "SpooledMessage"]

log = logging.getLogger("phobos.tracer.spool")

_HEAD = struct.Struct(">QIIHH")
_CRC = struct.Struct(">I")


@dataclass(frozen=True)
class SpooledMessage:
    seq: int
    topic: str
    key: bytes
    value: bytes
    records: int


@dataclass
class _Segment:
    first: int
    path: Path
    last: int = -1  # highest seq in it; -1 when empty
    records: int = 0
    size: int = 0


class Spool:
    """FIFO of messages on disk, at most ``max_bytes``; see the module docstring.

    Parameters
    ----------
    directory : where the segment files live (created; one spool per directory).
    max_bytes : size limit; beyond it the oldest segments are dropped and counted.
    segment_bytes : size of one segment file (default: max_bytes / 16, 64 KiB..64 MiB).
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 256 << 20,
                 segment_bytes: int | None = None) -> None:
        if max_bytes < 1 << 16:
            raise ValueError(f"spool size limit {max_bytes} bytes is too small (at least 64 KiB)")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = segment_bytes or min(max(self.max_bytes // 16, 64 << 10), 64 << 20)
        self.dropped_records = 0
        self.dropped_messages = 0
        self._segments: list[_Segment] = []
        self._writer = None
        self._acked: set[int] = set()
        self._cursor = self._read_cursor()
        self._load()
        self._next_seq = max([s.last for s in self._segments if s.last >= 0], default=self._cursor - 1) + 1
        self._next_seq = max(self._next_seq, self._cursor)
        self._read_pos = self._cursor

    # -- start-up -----------------------------------------------------------
    def _read_cursor(self) -> int:
        """The first undelivered seq; messages delivered out of order beyond it
        (listed on the file's second line) are not replayed either."""
        try:
            lines = (self.dir / "cursor").read_text().split("\n")
            cursor = int(lines[0].strip() or 0)
            self._acked = {int(x) for x in (lines[1].split() if len(lines) > 1 else []) if int(x) >= cursor}
            return cursor
        except (OSError, ValueError):
            self._acked = set()
            return 0

    def _write_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_text(f"{self._cursor}\n{' '.join(map(str, sorted(self._acked)))}\n")
        os.replace(tmp, self.dir / "cursor")

    def _load(self) -> None:
        for path in sorted(self.dir.glob("*.seg")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            seg = _Segment(first, path)
            good = 0
            for msg, end in self._frames(path):
                seg.last = msg.seq
                if msg.seq >= self._cursor and msg.seq not in self._acked:
                    seg.records += msg.records
                good = end
            size = path.stat().st_size
            if good < size:
                log.warning("spool %s: cutting a torn message at byte %d (crash while writing)", path, good)
                with open(path, "r+b") as fh:
                    fh.truncate(good)
            seg.size = good
            if seg.last >= 0 and seg.last < self._cursor:
                path.unlink()  # delivered before the last shutdown
                continue
            self._segments.append(seg)

    @staticmethod
    def _frames(path: Path, start: int = 0) -> Iterator[tuple[SpooledMessage, int]]:
        with open(path, "rb") as fh:
            fh.seek(start)
            pos = start
            while True:
                head = fh.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                seq, records, vlen, tlen, klen = _HEAD.unpack(head)
                body = fh.read(tlen + klen + vlen)
                crc = fh.read(_CRC.size)
                if len(body) < tlen + klen + vlen or len(crc) < _CRC.size:
                    return
                if _CRC.unpack(crc)[0] != zlib.crc32(head + body):
                    return
                pos += _HEAD.size + len(body) + _CRC.size
                topic = body[:tlen].decode()
                yield SpooledMessage(seq, topic, body[tlen:tlen + klen], body[tlen + klen:], records), pos

    # -- writing --------------------------------------------------------------
    def append(self, topic: str, key: bytes | None, value: bytes, records: int = 1) -> int:
        """Store one message at the end; returns its sequence number."""
        key = key or b""
        tb = topic.encode()
        seq = self._next_seq
        self._next_seq += 1
        head = _HEAD.pack(seq, records, len(value), len(tb), len(key))
        body = tb + key + value
        frame = head + body + _CRC.pack(zlib.crc32(head + body))
        seg = self._segments[-1] if self._segments else None
        if seg is None or seg.size >= self.segment_bytes:
            self._close_writer()
            seg = _Segment(seq, self.dir / f"{seq:020d}.seg")
            self._segments.append(seg)
        if self._writer is None:
            self._writer = open(seg.path, "ab")
        self._writer.write(frame)
        seg.size += len(frame)
        seg.last = seq
        seg.records += records
        self._enforce_limit()
        return seq

    def _enforce_limit(self) -> None:
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.pop(0)
            lost = sum(m.records for m, _ in self._frames(seg.path) if m.seq >= self._cursor and m.seq not in self._acked)
            msgs = sum(1 for m, _ in self._frames(seg.path) if m.seq >= self._cursor and m.seq not in self._acked)
            seg.path.unlink()
            self.dropped_records += lost
            self.dropped_messages += msgs
            log.error("spool over %d bytes: dropped its oldest %d records (%d messages)", self.max_bytes, lost, msgs)
            self._cursor = max(self._cursor, seg.last + 1)
            self._acked = {s for s in self._acked if s >= self._cursor}
            self._read_pos = max(self._read_pos, self._cursor)
            self._write_cursor()

    def sync(self) -> None:
        """Make appended messages durable (flush + fsync)."""
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())

    def _close_writer(self) -> None:
        if self._writer is not None:
            self.sync()
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_writer()
        self._write_cursor()

    # -- reading ----------------------------------------------------------------
    def read(self, limit: int = 1000) -> list[SpooledMessage]:
        """Up to ``limit`` messages from the read position on (skipping delivered ones)."""
        if self._writer is not None:
            self._writer.flush()
        out: list[SpooledMessage] = []
        for seg in self._segments:
            if seg.last < self._read_pos:
                continue
            for msg, _ in self._frames(seg.path):
                if msg.seq < self._read_pos or msg.seq in self._acked:
                    continue
                out.append(msg)
                if len(out) >= limit:
                    self._read_pos = msg.seq + 1
                    return out
        if out:
            self._read_pos = out[-1].seq + 1
        return out

    def rewind(self) -> None:
        """Read again from the first undelivered message (after a failed replay)."""
        self._read_pos = self._cursor

    def ack(self, seq: int, records: int = 0) -> None:
        """Message ``seq`` (of ``records`` records) was delivered; move the
        cursor over the delivered prefix and delete delivered segments."""
        if seq < self._cursor or seq in self._acked:
            return
        self._acked.add(seq)
        for seg in self._segments:
            if seg.first <= seq <= seg.last:
                seg.records = max(0, seg.records - records)
                break
        moved = False
        while self._cursor in self._acked:
            self._acked.discard(self._cursor)
            self._cursor += 1
            moved = True
        if not moved:
            return
        while self._segments and self._segments[0].last < self._cursor and self._segments[0].last >= 0:
            seg = self._segments.pop(0)
            if self._writer is not None and not self._segments:
                self._close_writer()
            seg.path.unlink(missing_ok=True)
        self._write_cursor()

    # -- state --------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def pending_messages(self) -> int:
        """Messages not yet delivered."""
        return max(0, self._next_seq - self._cursor - len(self._acked))

    @property
    def pending_records(self) -> int:
        """Records in undelivered messages."""
        return sum(s.records for s in self._segments)

    @property
    def unread(self) -> bool:
        """Messages after the read position wait to be replayed."""
        return self._read_pos < self._next_seq

    def __len__(self) -> int:
        return self.pending_messages
