"""Scanning a collection: name the candidates, then read every file or object once.

Folders are walked (hidden names and OS clutter ignored, folder links followed once), list
files are parsed (a .csv with path[,label], a .txt with one path per line), bucket prefixes
are listed page by page by :class:`~rayclust.images.ImageSet`; every candidate is then read
once by a pool of threads, hashed and probed from its header (:func:`probe_image`).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayclust import remote

from ._decode import DEFAULT_MAX_PIXELS, probe_image, quiet_pillow
from ._records import (
    CollectionError,
    ImageDecodeError,
    ImageRecord,
    SkippedImage,
    content_id,
    describe_read_error,
)

logger = logging.getLogger("rayclust.images")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".mpo"}
)
# OS clutter that nobody wants listed as "skipped" (hidden names are ignored as well).
IGNORED_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})
LOG_EVERY_S = 10.0  # plain progress lines when stderr is not a terminal

Candidate = tuple[Path | str, str | None]  # a local path or an s3:// / gs:// URI, its label


@dataclass(frozen=True)
class ScanSettings:
    """How a collection is scanned: ``ImageSet.from_*`` take these fields as keywords."""

    labels_from_folders: bool = False  # label = first folder below the root (or list folder)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression bombs
    progress: bool = True  # a bar in a terminal, a log line every LOG_EVERY_S otherwise
    num_threads: int = 4  # files read at once (reads and hashing release the GIL)
    storage_options: Mapping[str, Any] | None = None  # for s3:// and gs:// (rayclust.remote)


def unsupported_extension(path: str, suffix: str) -> SkippedImage | None:
    """The skip record of a listed file whose extension is not an image's, else None."""
    if suffix in IMAGE_EXTENSIONS:
        return None
    return SkippedImage(path, f"not an image file extension: {suffix or '(none)'}", "scan")


def _read_candidate(path: Path | str, storage_options: Mapping[str, Any] | None) -> bytes:
    if isinstance(path, str) and remote.is_remote(path):
        return remote.read_bytes(path, storage_options)
    return Path(path).read_bytes()


def _describe_candidate_error(path: Path | str, exc: Exception) -> str:
    if isinstance(path, str) and remote.is_remote(path):
        return remote.describe_error(exc)
    return describe_read_error(exc)


def _scan_one(
    path: Path | str, label: str | None, settings: ScanSettings
) -> ImageRecord | SkippedImage:
    """Hash and probe one file or object (a local Path, or an s3:// / gs:// URI string)."""
    try:
        data = _read_candidate(path, settings.storage_options)
    except Exception as exc:  # OSError locally; remote stores raise their own kinds too
        return SkippedImage(str(path), _describe_candidate_error(path, exc), "scan")
    if not data:
        return SkippedImage(str(path), "empty file (0 bytes)", "scan")
    try:
        probe_image(data, settings.max_pixels)
    except ImageDecodeError as exc:
        return SkippedImage(str(path), str(exc), "scan")
    return ImageRecord(str(path), content_id(data), label)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def scan_candidates(
    candidates: Iterable[Candidate], settings: ScanSettings, what: str
) -> tuple[list[ImageRecord], list[SkippedImage]]:
    """Scan in input order; threads overlap file reads (reads and hashing release the GIL).

    ``candidates`` may be a lazy iterator (a remote listing arriving page by page): it is
    consumed a window at a time, so reading starts before the listing ends and no more than
    a window of candidates waits in memory. Progress: a bar in a terminal; otherwise (CI
    logs) a plain log line every LOG_EVERY_S.
    """
    from tqdm.auto import tqdm

    started = last_line = time.perf_counter()
    show_bar = settings.progress and sys.stderr.isatty()
    total = len(candidates) if isinstance(candidates, Sized) else None
    of_total = f"/{total}" if total is not None else ""
    window = max(64, 16 * max(1, settings.num_threads))
    records: list[ImageRecord] = []
    skipped: list[SkippedImage] = []
    done = 0
    with (
        quiet_pillow(),  # entered once here, not per thread
        ThreadPoolExecutor(max_workers=max(1, settings.num_threads)) as pool,
        tqdm(total=total, desc=f"scanning {what}", unit="file", disable=not show_bar) as bar,
    ):
        for chunk in _chunks(candidates, window):
            results = pool.map(lambda item: _scan_one(*item, settings), chunk)
            for result in results:
                done += 1
                (records if isinstance(result, ImageRecord) else skipped).append(result)
                bar.update(1)
                if (
                    settings.progress
                    and not show_bar
                    and time.perf_counter() - last_line > LOG_EVERY_S
                ):
                    last_line = time.perf_counter()
                    logger.info("scanning %s: %d%s files", what, done, of_total)
    if settings.progress:  # debug: the caller reports the collection's own counts
        logger.debug(
            "scanned %s: %d images, %d skipped, %.1f s",
            what,
            len(records),
            len(skipped),
            time.perf_counter() - started,
        )
    return records, skipped


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def bucket_candidates(
    root: str, storage_options: Mapping[str, Any] | None, labels_from_folders: bool
) -> Iterator[tuple[str, str | None] | SkippedImage]:
    """Each object under the bucket prefix ``root`` as (URI, label), or the SkippedImage of
    one refused by its name or size alone; nothing is read. Ignored names are left out."""
    for obj in remote.iter_objects(root, storage_options):
        parts = remote.relative_parts(obj.uri, root)
        if not parts or any(is_ignored(part) for part in parts):
            continue
        refused = unsupported_extension(obj.uri, posixpath.splitext(parts[-1])[1].lower())
        if refused is None and obj.size == 0:
            refused = SkippedImage(obj.uri, "empty file (0 bytes)", "scan")
        label = parts[0] if labels_from_folders and len(parts) > 1 else None
        yield refused or (obj.uri, label)


def walk_files(root: Path) -> tuple[list[Path], list[SkippedImage]]:
    """Every visible file under root (following folder links once), sorted by path parts."""
    files: list[Path] = []
    problems: list[SkippedImage] = []
    seen_folders: set[str] = set()

    def on_error(exc: OSError) -> None:
        problems.append(
            SkippedImage(str(exc.filename), f"cannot list folder: {describe_read_error(exc)}")
        )

    for folder, subfolders, names in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:  # a link back up the tree (or a second link to one folder)
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders[:] = sorted(name for name in subfolders if not is_ignored(name))
        files.extend(Path(folder, name) for name in names if not is_ignored(name))
    files.sort(key=lambda path: path.relative_to(root).parts)
    return files, problems


def top_folder_label(path: Path, root: Path) -> str | None:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return None  # outside the root: no top folder to name it
    return parts[0] if len(parts) > 1 else None


def sorted_skipped(skipped: list[SkippedImage]) -> list[SkippedImage]:
    return sorted(skipped, key=lambda item: Path(item.path).parts)


def read_list(list_path: Path) -> list[tuple[str, str | None]]:
    _list_suffix(str(list_path))  # refuse other files before reading them
    # Tolerate Excel's byte-order mark; a name that is not UTF-8 keeps its bytes (as
    # surrogate escapes, Python's rule for file names), so it opens the file it names.
    text = list_path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    return parse_list(text, str(list_path))


def _list_suffix(name: str) -> str:
    suffix = posixpath.splitext(name)[1].lower()
    if suffix not in (".csv", ".txt"):
        raise CollectionError(
            f"list file {name!r} should end in .csv (path[,label]) or .txt"
            f" (one path per line), not {suffix or '(no extension)'}"
        )
    return suffix


def parse_list(text: str, name: str) -> list[tuple[str, str | None]]:
    suffix = _list_suffix(name)
    list_path = name  # named in the errors below
    if suffix == ".txt":
        lines = (line.strip() for line in text.splitlines())
        return [(line, None) for line in lines if line and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO(text))
    columns = [column.strip() for column in reader.fieldnames or []]
    if "path" not in columns:
        raise CollectionError(
            f"list file {str(list_path)!r} needs a header with a 'path' column"
            f" (and optionally 'label'); found columns {columns}"
        )
    reader.fieldnames = columns
    entries = []
    for row in reader:
        raw_path = (row.get("path") or "").strip()
        if raw_path:
            label = (row.get("label") or "").strip() or None
            entries.append((raw_path, label))
    return entries


def list_candidates(
    entries: Iterable[tuple[str, str | None]], base: Path | str, labels_from_folders: bool
) -> tuple[list[Candidate], list[SkippedImage]]:
    """Candidates named by a list file whose folder (a Path) or bucket prefix (a URI) is
    ``base``: relative entries are read from there, and with ``labels_from_folders`` an entry
    without a label gets its first folder below ``base``.

    A file listed again (the same path once resolved, however it is spelled) is used once:
    later entries are returned as skipped, "duplicate of list entry N" (entries counted from
    1, blank and comment lines and the header left out), so no image is clustered twice.
    """
    candidates: list[Candidate] = []
    duplicates: list[SkippedImage] = []
    first_entry: dict[str, int] = {}  # resolved path -> its entry number
    for number, (raw_path, label) in enumerate(entries, start=1):
        path: Path | str
        if isinstance(base, str):
            # In a list that lives in a bucket, plain paths are keys next to the list.
            path = raw_path if remote.is_remote(raw_path) else remote.join(base, raw_path)
            if label is None and labels_from_folders and path.startswith(base + "/"):
                parts = remote.relative_parts(path, base)
                label = parts[0] if len(parts) > 1 else None
        elif remote.is_remote(raw_path):  # a local list may name objects in a bucket
            path = raw_path
        else:
            path = Path(raw_path).expanduser()
            path = path if path.is_absolute() else base / path
            if label is None and labels_from_folders:
                label = top_folder_label(path, base)
        key = path if isinstance(path, str) else os.path.normpath(path)
        if key in first_entry:
            duplicates.append(
                SkippedImage(str(path), f"duplicate of list entry {first_entry[key]}", "scan")
            )
            continue
        first_entry[key] = number
        candidates.append((path, label))
    return candidates, duplicates
