"""A bounded, append-only, on-disk FIFO of byte frames: where a sink parks rows during an outage.

Frames go to numbered segment files (``seg-<n>.spill``); each frame is
``<u32 length><u32 crc32><payload>``. A small ``cursor`` file (replaced atomically)
records how far the oldest segment has been consumed; fully consumed segments are
deleted, which is what frees space. On open, every segment is scanned: a torn or
corrupt tail (a crash mid-append) is truncated away and reported in
``recovered_truncations``, never silently replayed.

The buffer is bounded by ``max_bytes`` of segment files on disk. ``append`` is all
or nothing: when the frames do not fit it raises :class:`SpillFullError` and writes
nothing, so the caller can apply backpressure without losing or half-writing rows.

Consumption is at-least-once: a crash after the frames were delivered but before
``consume`` persisted the cursor replays them; the QuestDB tables' dedup keys make
that harmless.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

__all__ = ["SpillBuffer", "SpillConfig", "SpillError", "SpillFullError"]

_HEADER = struct.Struct(">II")
_SEG_PREFIX = "seg-"
_SEG_SUFFIX = ".spill"


class SpillError(RuntimeError):
    """The spill directory cannot be used."""


class SpillFullError(SpillError):
    """The spill buffer has no room: stop accepting rows rather than drop them."""


class SpillConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    directory: str = "var/spill/questdb"
    #: Upper bound on the segment files' total size.
    max_bytes: int = 256 * 1024 * 1024
    #: A segment is closed and a new one started past this size.
    segment_bytes: int = 8 * 1024 * 1024
    #: fsync after every append (durable across power loss, slower).
    fsync: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.segment_bytes <= 0:
            raise ValueError("spill config: max_bytes and segment_bytes must be positive")


class _Cursor(msgspec.Struct, frozen=True):
    segment: int
    offset: int


class SpillBuffer:
    """FIFO of frames on disk. Not thread-safe: one owner (one sink partition) per directory."""

    def __init__(self, config: SpillConfig) -> None:
        self.config = config
        self.dir = Path(config.directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpillError(
                f"open spill {self.dir}: {exc}; hint: check the path and its permissions"
            ) from exc
        self.recovered_truncations = 0
        # segment number -> frame count still to consume (for the first, after the cursor)
        self._segments: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._cursor = self._load_cursor()
        self._scan()
        self._writer_seg: int | None = None
        # Frames handed out by peek() and not yet consumed: end offset of each.
        self._peeked: list[tuple[int, int]] = []

    # -- recovery --------------------------------------------------------------------------
    def _seg_path(self, n: int) -> Path:
        return self.dir / f"{_SEG_PREFIX}{n:020d}{_SEG_SUFFIX}"

    def _load_cursor(self) -> _Cursor:
        path = self.dir / "cursor"
        if not path.exists():
            return _Cursor(0, 0)
        try:
            return msgspec.json.decode(path.read_bytes(), type=_Cursor)
        except (OSError, msgspec.DecodeError) as exc:
            raise SpillError(
                f"open spill {self.dir}: unreadable cursor ({exc}); "
                "hint: inspect the directory; deleting the cursor replays from the oldest segment"
            ) from exc

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_bytes(msgspec.json.encode(self._cursor))
        os.replace(tmp, self.dir / "cursor")

    def _scan(self) -> None:
        numbers = sorted(
            int(p.name[len(_SEG_PREFIX) : -len(_SEG_SUFFIX)])
            for p in self.dir.glob(f"{_SEG_PREFIX}*{_SEG_SUFFIX}")
        )
        for n in numbers:
            path = self._seg_path(n)
            if n < self._cursor.segment:  # consumed but not deleted (crash): finish the job
                path.unlink(missing_ok=True)
                continue
            start = self._cursor.offset if n == self._cursor.segment else 0
            count, good_end = self._count_frames(path, start)
            size = path.stat().st_size
            if good_end < size:
                with open(path, "r+b") as fh:
                    fh.truncate(good_end)
                self.recovered_truncations += 1
                size = good_end
            self._segments[n] = count
            self._sizes[n] = size
        if self._segments and self._cursor.segment not in self._segments:
            first = min(self._segments)
            self._cursor = _Cursor(first, 0)

    @staticmethod
    def _count_frames(path: Path, start: int) -> tuple[int, int]:
        data = path.read_bytes()
        pos = start
        count = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[pos + _HEADER.size : end]) != crc:
                break
            pos = end
            count += 1
        return count, pos

    # -- state -----------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Frames not yet consumed."""
        return sum(self._segments.values())

    @property
    def size_bytes(self) -> int:
        """Bytes of segment files on disk (what ``max_bytes`` bounds)."""
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return self.rows

    def __bool__(self) -> bool:
        return self.rows > 0

    def room(self) -> int:
        return self.config.max_bytes - self.size_bytes

    # -- append ----------------------------------------------------------------------------
    def append(self, frames: Sequence[bytes]) -> None:
        """Append frames in order, all or nothing."""
        if not frames:
            return
        need = sum(_HEADER.size + len(f) for f in frames)
        if need > self.room():
            raise SpillFullError(
                f"spill to {self.dir}: full ({self.size_bytes} of {self.config.max_bytes} "
                f"bytes used, {len(frames)} rows / {need} bytes more refused); hint: restore "
                "the downstream store so the spill drains, or raise spill max_bytes"
            )
        blob = bytearray()
        for f in frames:
            blob += _HEADER.pack(len(f), zlib.crc32(f))
            blob += f
        seg = self._writable_segment(len(blob))
        path = self._seg_path(seg)
        try:
            with open(path, "ab") as fh:
                fh.write(blob)
                fh.flush()
                if self.config.fsync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            # Undo a partial write so the file holds whole frames only.
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(self._sizes.get(seg, 0))
            except OSError:
                pass
            raise SpillError(
                f"spill to {path}: {exc}; hint: free disk space or fix permissions"
            ) from exc
        self._segments[seg] = self._segments.get(seg, 0) + len(frames)
        self._sizes[seg] = self._sizes.get(seg, 0) + len(blob)

    def _writable_segment(self, incoming: int) -> int:
        if self._segments:
            last = max(self._segments)
            if self._sizes[last] == 0 or self._sizes[last] + incoming <= self.config.segment_bytes:
                return last
            new = last + 1
        else:
            new = max(self._cursor.segment, 0) + (1 if self._cursor.offset else 0)
            self._cursor = _Cursor(new, 0)
            self._save_cursor()
        self._segments[new] = 0
        self._sizes[new] = 0
        self._seg_path(new).touch()
        return new

    # -- consume ---------------------------------------------------------------------------
    def peek(self, max_frames: int) -> list[bytes]:
        """Up to ``max_frames`` oldest unconsumed frames, in order, without consuming them."""
        out: list[bytes] = []
        self._peeked = []
        seg, offset = self._cursor.segment, self._cursor.offset
        for n in sorted(self._segments):
            if n < seg or len(out) >= max_frames:
                continue
            start = offset if n == seg else 0
            remaining = self._segments[n]
            if remaining == 0:
                continue
            with open(self._seg_path(n), "rb") as fh:
                fh.seek(start)
                pos = start
                while remaining and len(out) < max_frames:
                    length, _crc = _HEADER.unpack(fh.read(_HEADER.size))
                    out.append(fh.read(length))
                    pos += _HEADER.size + length
                    remaining -= 1
                    self._peeked.append((n, pos))
        return out

    def consume(self, n: int) -> None:
        """Mark the ``n`` oldest frames (from the last ``peek``) as delivered."""
        if n <= 0:
            return
        if n > len(self._peeked):
            raise SpillError(f"spill consume({n}): only {len(self._peeked)} frames were peeked")
        seg, end = self._peeked[n - 1]
        for s, _ in self._peeked[:n]:
            self._segments[s] -= 1
        self._peeked = []
        self._cursor = _Cursor(seg, end)
        # Delete every segment before the cursor's, and the cursor's own once exhausted
        # (the next append then starts a fresh segment).
        for s in sorted(self._segments):
            if s < seg or (s == seg and self._segments[s] == 0):
                if s == seg:
                    self._cursor = _Cursor(s + 1, 0)
                self._seg_path(s).unlink(missing_ok=True)
                del self._segments[s]
                del self._sizes[s]
        self._save_cursor()

    def close(self) -> None:
        self._peeked = []
