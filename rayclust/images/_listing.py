"""Listing without reading: the names of a collection, streamed, for worker-side scanning.

With ``extraction.scan: workers`` the driver only names the candidates (a folder walked
with ``os.scandir``, a bucket listed page by page, a list file parsed); the workers read
each file once and call :func:`scan_bytes` on the very bytes they then decode, so the
content id is that of what was decoded and no image byte crosses the driver.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rayclust import remote
from rayclust.runs import read_csv, write_csv

from ._decode import probe_image
from ._records import ImageDecodeError, ImageRecord, SkippedImage, content_id
from ._scan import (
    bucket_candidates,
    is_ignored,
    list_candidates,
    parse_list,
    read_list,
    unsupported_extension,
)
from ._table import ImageTable

Named = tuple[str, str | None]  # a path or URI, its label


def _walk_sorted(root: Path) -> Iterator[Path | SkippedImage]:
    """Depth first, entries sorted by name at each level: the order of ``walk_files`` (sorted
    by path parts), one folder's entries in memory at a time. Folder links are followed once."""
    seen: set[str] = set()

    def walk(folder: Path) -> Iterator[Path | SkippedImage]:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as entries:
                listed = sorted((e.name, e.is_dir()) for e in entries if not is_ignored(e.name))
        except OSError as exc:
            yield SkippedImage(str(folder), f"cannot list folder: {exc.strerror or exc}")
            return
        for name, is_dir in listed:
            path = folder / name
            if is_dir:
                yield from walk(path)
            else:
                yield path

    yield from walk(root)


def iter_source(
    source: str | Path,
    labels_from_folders: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[Named | SkippedImage]:
    """The candidates of a folder, list file or bucket prefix, in scan order, lazily; files
    refused by name alone (extension, empty object, duplicate list entry) come as
    :class:`SkippedImage`. Nothing is read but listings (and the list file itself). A bad
    URI or a missing local source raises here, before anything is listed."""
    text = str(source)
    if remote.is_remote(text):
        remote.check_uri(text)
        return _iter_remote(text, labels_from_folders, storage_options)
    path = Path(text).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"image source {text!r} does not exist")
    if not path.is_dir():
        return _listed(read_list(path), path.parent, labels_from_folders)
    return _iter_folder(path, labels_from_folders)


def _iter_remote(
    text: str, labels_from_folders: bool, storage_options: Mapping[str, Any] | None
) -> Iterator[Named | SkippedImage]:
    is_list = posixpath.splitext(text)[1].lower() in (".csv", ".txt")
    if is_list and remote.is_file(text, storage_options):
        entries = parse_list(remote.read_text(text, storage_options), text)
        yield from _listed(entries, remote.parent(text), labels_from_folders)
        return
    yield from bucket_candidates(text.rstrip("/"), storage_options, labels_from_folders)


def _iter_folder(root: Path, labels_from_folders: bool) -> Iterator[Named | SkippedImage]:
    for item in _walk_sorted(root):
        if isinstance(item, SkippedImage):
            yield item
            continue
        refused = unsupported_extension(str(item), item.suffix.lower())
        parts = item.relative_to(root).parts
        label = parts[0] if labels_from_folders and len(parts) > 1 else None
        yield refused or (str(item), label)


def _listed(entries, base, labels_from_folders: bool) -> Iterator[Named | SkippedImage]:
    candidates, duplicates = list_candidates(entries, base, labels_from_folders)
    yield from ((str(path), label) for path, label in candidates)
    yield from duplicates


def scan_bytes(
    path: str, label: str | None, data: bytes, max_pixels: int
) -> ImageRecord | SkippedImage:
    """What the driver's scan decides for one file, from bytes already read (by
    ``read_checked``): its record (content id of these bytes) or why the header is refused."""
    try:
        probe_image(data, max_pixels)
    except ImageDecodeError as exc:
        return SkippedImage(path, str(exc), "scan")
    return ImageRecord(path, content_id(data), label)


class ScanParts:
    """The manifest and skipped files of a worker scan, one small CSV part per batch
    (``manifest-NNNNNN.csv``: order,path,image_id,label; ``skipped-NNNNNN.csv``:
    order,path,reason,stage), written as batches arrive so the driver never holds them
    whole during the scan; ``order`` is the candidate's place in the listing."""

    COLUMNS = {
        "manifest": ("order", "path", "image_id", "label"),
        "skipped": ("order", "path", "reason", "stage"),
    }

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.count = 0

    def clear(self) -> ScanParts:
        """Start afresh (a rerun into the same folder rewrites its parts)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for kind in self.COLUMNS:
            for old in self.folder.glob(f"{kind}-*.csv"):
                old.unlink()
        return self

    def write(self, kind: str, rows: list[tuple]) -> None:
        if rows:
            write_csv(self.folder / f"{kind}-{self.count:06d}.csv", self.COLUMNS[kind], rows)
            self.count += 1

    def _rows(self, kind: str) -> Iterator[dict[str, str]]:
        for part in sorted(self.folder.glob(f"{kind}-*.csv")):
            yield from read_csv(part)

    def image_set(self) -> ImageTable:
        """The parts read back in listing order, in columns (``ImageTable``) written to
        ``columns/`` beside the parts and memory-mapped: the driver streams the manifest
        through, never holding it whole; skipped at scan first, then decode failures, as a
        driver scan orders them."""
        images = ImageTable.from_rows(
            ((int(row["order"]), row["path"], row["image_id"], row["label"] or None)
             for row in self._rows("manifest")),
            folder=self.folder / "columns",
        )  # fmt: skip
        skipped = sorted(
            self._rows("skipped"), key=lambda row: (row["stage"] != "scan", int(row["order"]))
        )
        images.skipped = [SkippedImage(row["path"], row["reason"], row["stage"]) for row in skipped]
        return images
