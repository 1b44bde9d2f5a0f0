"""A worker scan's images held in columns: what a driver keeps per image at a million images.

An ``ImageSet`` of a million ``ImageRecord`` objects costs ~300 bytes an image in Python
objects; :class:`ImageTable` keeps each column as one buffer (paths and ids: encoded bytes
plus offsets; labels: int32 codes into the sorted names), ~100 bytes an image for short paths.
It reads like an ``ImageSet`` (``records``, ``paths``, ``image_ids``, ``labels``,
``label_names``, ``label_codes()``, ``skipped``), and its columns slice and pickle as
buffers, so a shard's ids travel to its actor without a Python string per id in the driver.

On disk (``from_rows(..., folder=...)``, what a worker scan's read back uses): the columns are
written to files as the rows stream in and memory-mapped, so the driver never holds the
manifest whole; the pages it touches are the file's, which the kernel drops under pressure.
Files per column: ``<name>.bin`` (the bytes) and ``<name>.offsets`` (int64), ``order.i64`` and
``labels.i32``.
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

from ._records import ImageRecord, SkippedImage

# Paths are encoded as the run's CSV files are (runs.CSV_ENCODING / CSV_ERRORS): a name that
# is not UTF-8 keeps its bytes through the round trip.
_ENCODING, _ERRORS = "utf-8", "surrogateescape"
_GATHER_CHUNK = 8_192  # rows gathered per join while reordering: ~1 MB of transients
_FLUSH_ROWS = 65_536  # integers buffered per file column before they are written


class StringColumn(Sequence[str]):
    """Strings as one bytes buffer and int64 offsets; a slice is a column (a copy of its
    bytes only), an item a ``str``."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes | bytearray | mmap.mmap, offsets: np.ndarray) -> None:
        self._data = data
        self._offsets = offsets

    @classmethod
    def open(cls, stem: Path) -> StringColumn:
        """The column written at ``stem`` (``.bin`` and ``.offsets``), memory-mapped."""
        return cls(_map_bytes(stem.with_suffix(".bin")), _map_ints(stem.with_suffix(".offsets")))

    @classmethod
    def from_strings(cls, values: Iterable[str]) -> StringColumn:
        builder = _ColumnBuilder()
        for value in values:
            builder.append(value)
        return builder.build()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> StringColumn: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self.take(np.arange(start, stop, step))
            stop = max(start, stop)
            lo, hi = int(self._offsets[start]), int(self._offsets[stop])
            return StringColumn(self._data[lo:hi], self._offsets[start : stop + 1] - lo)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {index} of a column of {n}")
        lo, hi = self._offsets[index], self._offsets[index + 1]
        return self._data[lo:hi].decode(_ENCODING, _ERRORS)

    def __iter__(self) -> Iterator[str]:
        data, offsets = self._data, self._offsets.tolist()
        for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
            yield data[lo:hi].decode(_ENCODING, _ERRORS)

    def take(self, rows: np.ndarray, stem: Path | None = None) -> StringColumn:
        """The column in the order of ``rows``, gathered chunk by chunk into one buffer (or,
        with ``stem``, into files there, memory-mapped)."""
        rows = np.asarray(rows, dtype=np.int64)
        if stem is None:
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(np.diff(self._offsets)[rows], out=offsets[1:])
            out = bytearray(int(offsets[-1]))
            for at, joined in self._gathered(rows):
                out[offsets[at] : offsets[at] + len(joined)] = joined
            return StringColumn(out, offsets)
        writer = _FileColumn(stem)
        for _, joined in self._gathered(rows, writer.lengths):
            writer.data.write(joined)
        return writer.build()

    def _gathered(self, rows: np.ndarray, lengths: _IntFile | None = None):
        """(first row, the chunk's bytes joined) per chunk of ``rows``."""
        data = self._data
        for at in range(0, len(rows), _GATHER_CHUNK):
            chunk = rows[at : at + _GATHER_CHUNK]
            starts, stops = self._offsets[chunk], self._offsets[chunk + 1]
            if lengths is not None:
                lengths.extend(stops - starts)
            bounds = zip(starts.tolist(), stops.tolist(), strict=True)
            yield at, b"".join([data[a:b] for a, b in bounds])

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._offsets.nbytes

    def as_array(self) -> np.ndarray:
        """A numpy bytes array (``S<width>``) to sort or compare: a view of the buffer when
        every string has one width (content ids), else a padded copy."""
        widths = np.diff(self._offsets)
        if len(widths) and widths.min() == widths.max() and widths[0] > 0:
            return np.frombuffer(self._data, dtype=f"S{int(widths[0])}")
        bounds = zip(self._offsets[:-1].tolist(), self._offsets[1:].tolist(), strict=True)
        return np.array([bytes(self._data[lo:hi]) for lo, hi in bounds], dtype=bytes)

    def __reduce__(self):  # two buffers, not a string per row (a mapped file's bytes copied)
        data = self._data if isinstance(self._data, (bytes, bytearray)) else bytes(self._data)
        return (StringColumn, (data, np.asarray(self._offsets)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringColumn):
            return bytes(self._data) == bytes(other._data) and np.array_equal(
                self._offsets, other._offsets
            )
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringColumn({len(self)} strings, {self.nbytes:,} bytes)"


class _ColumnBuilder:
    def __init__(self) -> None:
        self._data = bytearray()
        self._offsets = array("q", [0])

    def append(self, value: str) -> None:
        self._data += value.encode(_ENCODING, _ERRORS)
        self._offsets.append(len(self._data))

    def build(self) -> StringColumn:
        """The column, on this builder's buffers (no copy); the builder is spent."""
        column = StringColumn(self._data, np.frombuffer(self._offsets, dtype=np.int64))
        self._data, self._offsets = bytearray(), array("q", [0])
        return column


class _IntFile:
    """Integers appended to a raw file, a bounded buffer at a time."""

    def __init__(self, path: Path, typecode: str, first: int | None = None) -> None:
        self.path = path
        self._handle: BinaryIO = path.open("wb")
        self._buffer = array(typecode)
        self.total = 0  # a running sum: offsets from lengths
        if first is not None:
            self._buffer.append(first)

    def append(self, value: int) -> None:
        self._buffer.append(value)
        if len(self._buffer) >= _FLUSH_ROWS:
            self._flush()

    def extend(self, lengths: np.ndarray) -> None:
        """Append the running sums of ``lengths`` (offsets of strings of these lengths)."""
        ends = self.total + np.cumsum(lengths, dtype=np.int64)
        if len(ends):
            self.total = int(ends[-1])
        self.write(ends)

    def write(self, values: np.ndarray) -> None:
        self._flush()
        self._handle.write(np.ascontiguousarray(values).tobytes())

    def _flush(self) -> None:
        self._handle.write(self._buffer.tobytes())
        del self._buffer[:]

    def close(self) -> Path:
        self._flush()
        self._handle.close()
        return self.path


class _FileColumn:
    """A StringColumn written to ``stem.bin`` / ``stem.offsets`` as its strings come."""

    def __init__(self, stem: Path) -> None:
        self.stem = stem
        self.data: BinaryIO = stem.with_suffix(".bin").open("wb")
        self.lengths = _IntFile(stem.with_suffix(".offsets"), "q", first=0)

    def append(self, value: str) -> None:
        encoded = value.encode(_ENCODING, _ERRORS)
        self.data.write(encoded)
        self.lengths.total += len(encoded)
        self.lengths.append(self.lengths.total)

    def build(self) -> StringColumn:
        self.data.close()
        self.lengths.close()
        return StringColumn.open(self.stem)


def _map_bytes(path: Path) -> mmap.mmap | bytes:
    if path.stat().st_size == 0:  # an empty file cannot be mapped
        return b""
    with path.open("rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _map_ints(path: Path, dtype: str = "int64") -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _split_rows(rows, orders, paths, ids, raw_codes) -> tuple[list[str], np.ndarray]:
    """Append ``(order, path, image_id, label)`` rows to the four columns (in memory or files,
    labels as codes in first-seen order); returns the sorted label names and the remap from
    first-seen codes to theirs (``remap[-1]`` is -1: no label)."""
    label_index: dict[str, int] = {}
    for order, path, image_id, label in rows:
        orders.append(order)
        paths.append(path)
        ids.append(image_id)
        raw_codes.append(-1 if not label else label_index.setdefault(label, len(label_index)))
    names = sorted(label_index)
    return names, np.array([names.index(n) for n in label_index] + [-1], dtype=np.int32)


def _in_order(order: np.ndarray) -> bool:
    return len(order) == 0 or not bool(np.any(np.diff(order) < 0))


class LabelColumn(Sequence["str | None"]):
    """Labels as int32 codes into sorted names; -1 is no label."""

    __slots__ = ("codes", "names")

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes = codes
        self.names = names

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return LabelColumn(self.codes[index], self.names)
        code = int(self.codes[index])
        return None if code < 0 else self.names[code]

    def __iter__(self) -> Iterator[str | None]:
        names = self.names
        for code in self.codes.tolist():
            yield None if code < 0 else names[code]


class ImageTable:
    """Usable images in columns and the skipped files (a list: they are few), in listing
    order; reads as an ``ImageSet`` does."""

    def __init__(
        self,
        paths: StringColumn,
        image_ids: StringColumn,
        labels: LabelColumn,
        skipped: list[SkippedImage] | None = None,
    ) -> None:
        if not len(paths) == len(image_ids) == len(labels):
            raise ValueError(
                f"columns differ in length: {len(paths)} paths, {len(image_ids)} ids, "
                f"{len(labels)} labels"
            )
        self.paths = paths
        self.image_ids = image_ids
        self.labels = labels
        self.skipped = list(skipped or [])

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[int, str, str, str | None]],
        skipped: list[SkippedImage] | None = None,
        folder: Path | None = None,
    ) -> ImageTable:
        """From ``(order, path, image_id, label)`` rows in any order: sorted by ``order``.
        With ``folder`` the columns are files there, memory-mapped (the folder is emptied
        of earlier columns first)."""
        if folder is None:
            return cls._in_memory(rows, skipped)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        orders = _IntFile(folder / "unsorted-order.i64", "q")
        raw_codes = _IntFile(folder / "unsorted-labels.i32", "i")
        paths, ids = _FileColumn(folder / "unsorted-paths"), _FileColumn(folder / "unsorted-ids")
        names, remap = _split_rows(rows, orders, paths, ids, raw_codes)
        order_array = _map_ints(orders.close())
        path_column, id_column = paths.build(), ids.build()
        raw = _map_ints(raw_codes.close(), "int32")
        by_order = None if _in_order(order_array) else np.argsort(order_array, kind="stable")
        codes = _IntFile(folder / "labels.i32", "i")
        for at in range(0, len(raw), _FLUSH_ROWS):
            chunk = slice(at, at + _FLUSH_ROWS)
            codes.write(remap[raw[chunk] if by_order is None else raw[by_order[chunk]]])
        if by_order is None:  # one batch, or parts that arrived in order: renamed, not copied
            for name in ("paths", "ids"):
                for suffix in (".bin", ".offsets"):
                    (folder / f"unsorted-{name}{suffix}").replace(folder / f"{name}{suffix}")
        else:  # the sort: 8 B an image while it lasts
            path_column = path_column.take(by_order, folder / "paths")
            id_column = id_column.take(by_order, folder / "ids")
        table = cls(
            path_column, id_column, LabelColumn(_map_ints(codes.close(), "int32"), names), skipped
        )
        del order_array, raw
        for unsorted in folder.glob("unsorted-*"):
            unsorted.unlink()  # mapped until now: Linux keeps the pages until unmapped
        return table

    @classmethod
    def _in_memory(
        cls, rows: Iterable[tuple[int, str, str, str | None]], skipped: list[SkippedImage] | None
    ) -> ImageTable:
        orders, paths, ids, raw_codes = array("q"), _ColumnBuilder(), _ColumnBuilder(), array("i")
        names, remap = _split_rows(rows, orders, paths, ids, raw_codes)
        codes = (
            remap[np.frombuffer(raw_codes, dtype=np.int32)] if raw_codes else np.zeros(0, np.int32)
        )
        order_array = np.frombuffer(orders, dtype=np.int64)
        path_column, id_column = paths.build(), ids.build()
        if not _in_order(order_array):
            by_order = np.argsort(order_array, kind="stable")
            path_column = path_column.take(by_order)  # one column at a time: a bounded peak
            id_column = id_column.take(by_order)
            codes = codes[by_order]
        return cls(path_column, id_column, LabelColumn(codes.astype(np.int32), names), skipped)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self) -> Iterator[ImageRecord]:
        for path, image_id, label in zip(self.paths, self.image_ids, self.labels, strict=True):
            yield ImageRecord(path, image_id, label)

    @property
    def records(self) -> list[ImageRecord]:
        """Every image as an ``ImageRecord``: what the local engine's callers take (a
        Python object per image; the Ray engine's path reads the columns instead)."""
        return list(self)

    @property
    def has_labels(self) -> bool:
        return len(self) > 0 and bool(np.all(self.labels.codes >= 0))

    @property
    def label_names(self) -> list[str]:
        return list(self.labels.names)

    def label_codes(self) -> np.ndarray:
        return self.labels.codes.astype(np.int64)

    @property
    def nbytes(self) -> int:
        """The columns' bytes (what the table holds per image, summed)."""
        return self.paths.nbytes + self.image_ids.nbytes + self.labels.codes.nbytes
