"""TFRecord shards read record by record with their framing and CRC32C checked.

grain's ``TFRecordIterDataset`` reads the length and the payload but skips both checksums, so a
flipped byte reaches the example parser: it either fails there (at the same position after every
resume) or, worse, parses into silently wrong landmarks. This reader checks each record as it goes:

* the 8-byte length against its masked CRC32C: if that fails the length cannot be trusted, so the
  rest of the shard cannot be followed; the record is reported and the shard ends there;
* the payload against its masked CRC32C: if that fails the record is reported and reading goes on
  at the next record (its length was verified, so the next offset is known);
* a short header or payload (a truncated file) is reported and ends the shard.

A damaged record comes out as a ``Record`` without a payload, naming the shard and byte offset, so
the training pipeline can log it, count it against its skip budget and move on. The iterator state
is ``{"reader_offset": int}``, the same as grain's reader, so checkpoints resume across the change.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterator
from typing import Any

import google_crc32c
import grain

_MASK_DELTA = 0xA282EAD8
_HEADER = 12  # uint64 length + uint32 masked CRC32C of the length
_FOOTER = 4  # uint32 masked CRC32C of the payload


def masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC32C, rotated right by 15 bits, plus a constant (mod 2**32)."""
  crc = google_crc32c.value(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Record:
  """One record as read: where it is (for messages) and its payload, or why there is none."""

  path: str
  offset: int  # a byte offset (TFRecord) or a record index within the shard (ArrayRecord)
  payload: bytes | None
  error: str = ""
  unit: str = "byte"

  @property
  def where(self) -> str:
    """``byte 1234`` or ``record 5``, as ``fewshot-jax data verify`` reports it."""
    return f"{self.unit} {self.offset}"


def read_at(f: Any, path: str, offset: int) -> tuple[Record, int | None] | None:
  """The record at ``offset`` of the open file ``f``, and the next record's offset.

  Returns None at the clean end of the file. The next offset is None when the shard cannot be
  followed past this record (its length is damaged or the file ends inside it).
  """
  f.seek(offset)
  header = f.read(_HEADER)
  if not header:
    return None
  if len(header) < _HEADER:
    return Record(path, offset, None, f"truncated record header ({len(header)} of 12 bytes)"), None
  length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
  if masked_crc32c(length_bytes) != length_crc:
    return Record(path, offset, None, "length checksum mismatch"), None
  (length,) = struct.unpack("<Q", length_bytes)
  payload = f.read(length)
  footer = f.read(_FOOTER)
  if len(payload) < length or len(footer) < _FOOTER:
    return Record(path, offset, None, f"truncated record (expected {length} bytes of data)"), None
  following = offset + _HEADER + length + _FOOTER
  if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
    return Record(path, offset, None, "data checksum mismatch"), following
  return Record(path, offset, payload), following


def iter_file(path: str | os.PathLike) -> Iterator[Record]:
  """Every record of one TFRecord file, damaged ones included (without a payload)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    offset: int | None = 0
    while offset is not None:
      got = read_at(f, path, offset)
      if got is None:
        return
      record, offset = got
      yield record


class _CheckedIterator(grain.DatasetIterator):
  """grain iterator over one shard; its state is the byte offset of the next record."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path
    self._file = None
    self._offset = 0
    self._ended = False  # the shard could not be followed past a damaged record

  def __next__(self) -> Record:
    if self._ended:
      raise StopIteration
    if self._file is None:
      self._file = open(self._path, "rb")  # pylint: disable=consider-using-with
    got = read_at(self._file, self._path, self._offset)
    if got is None:
      raise StopIteration
    record, following = got
    if following is None:
      # Resuming from a checkpoint taken here must not re-read the damage: park at the file's end.
      self._ended = True
      following = os.fstat(self._file.fileno()).st_size
    self._offset = following
    return record

  def get_state(self) -> dict[str, int]:
    return {"reader_offset": self._offset}

  def set_state(self, state: dict[str, int]) -> None:
    self._offset = int(state["reader_offset"])
    self._ended = False

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    super().close()


class CheckedTFRecordIterDataset(grain.IterDataset):
  """One TFRecord shard as a grain ``IterDataset`` of ``Record`` (framing and CRC32C checked)."""

  def __init__(self, path: str):
    super().__init__()
    self._path = os.fspath(path)

  def __iter__(self) -> _CheckedIterator:
    return _CheckedIterator(self._path)

  def __str__(self) -> str:
    return f"CheckedTFRecordIterDataset(path={self._path!r})"
