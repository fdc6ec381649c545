"""The bounded on-disk spill: FIFO order, persistence across reopen, bounds, torn tails."""

from __future__ import annotations

from pathlib import Path

import pytest

from sinks.spill import SpillBuffer, SpillConfig, SpillFullError

# Each frame costs an 8-byte header on disk.
HEADER = 8


def make(tmp_path: Path, **kw: int) -> SpillBuffer:
    return SpillBuffer(SpillConfig(directory=str(tmp_path / "spill"), **kw))


def segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spill").glob("seg-*.spill"))


def test_frames_come_back_in_order_and_consume_removes_them(tmp_path: Path) -> None:
    sp = make(tmp_path)
    sp.append([b"a", b"bb"])
    sp.append([b"ccc"])
    assert sp.rows == 3
    assert sp.size_bytes == 3 * HEADER + 6
    assert sp.peek(2) == [b"a", b"bb"]
    sp.consume(1)
    assert sp.rows == 2
    assert sp.peek(10) == [b"bb", b"ccc"]
    sp.consume(2)
    assert sp.rows == 0
    assert not sp
    assert segments(tmp_path) == []  # fully consumed segments are deleted
    sp.append([b"d"])
    assert sp.peek(5) == [b"d"]


def test_state_survives_reopen(tmp_path: Path) -> None:
    sp = make(tmp_path)
    sp.append([b"one", b"two", b"three"])
    sp.peek(1)
    sp.consume(1)
    sp.close()
    again = make(tmp_path)
    assert again.rows == 2
    assert again.peek(10) == [b"two", b"three"]


def test_full_spill_refuses_whole_append_and_writes_nothing(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=40, segment_bytes=40)
    sp.append([b"x" * 10, b"y" * 10])  # 36 bytes
    with pytest.raises(SpillFullError, match=r"full .* hint"):
        sp.append([b"z"])  # 9 more bytes would exceed 40
    assert sp.rows == 2
    assert sp.size_bytes == 36
    assert sp.peek(10) == [b"x" * 10, b"y" * 10]


def test_segments_rotate_and_consuming_frees_room(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=100, segment_bytes=20)
    for i in range(5):
        sp.append([bytes([65 + i]) * 10])  # 18 bytes each: one segment per frame
    assert len(segments(tmp_path)) == 5
    assert sp.size_bytes == 90
    with pytest.raises(SpillFullError):
        sp.append([b"q" * 10])
    assert sp.peek(2) == [b"A" * 10, b"B" * 10]
    sp.consume(2)
    assert len(segments(tmp_path)) == 3
    sp.append([b"F" * 10])
    assert sp.peek(10) == [b"C" * 10, b"D" * 10, b"E" * 10, b"F" * 10]


def test_torn_tail_is_truncated_on_open_not_replayed(tmp_path: Path) -> None:
    sp = make(tmp_path)
    sp.append([b"good-1", b"good-2"])
    sp.close()
    (seg,) = segments(tmp_path)
    with open(seg, "ab") as fh:  # a crash halfway through writing a third frame
        fh.write(b"\x00\x00\x00\x10\x12\x34")
    again = make(tmp_path)
    assert again.recovered_truncations == 1
    assert again.peek(10) == [b"good-1", b"good-2"]
    assert seg.stat().st_size == 2 * HEADER + 12


def test_corrupt_frame_is_cut_at_the_checksum(tmp_path: Path) -> None:
    sp = make(tmp_path)
    sp.append([b"first", b"second"])
    sp.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the second payload
    seg.write_bytes(bytes(data))
    again = make(tmp_path)
    assert again.peek(10) == [b"first"]
    assert again.recovered_truncations == 1


def test_unusable_directory_names_the_step(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(Exception, match=r"open spill .* hint"):
        SpillBuffer(SpillConfig(directory=str(blocker / "spill")))
