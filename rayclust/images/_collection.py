"""ImageSet: the scanned collection (usable records and skipped files), and its CSV files."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust import remote
from rayclust.runs import write_csv

from ._decode import DEFAULT_MAX_PIXELS
from ._records import CollectionError, ImageRecord, SkippedImage
from ._scan import (
    Candidate,
    ScanSettings,
    bucket_candidates,
    list_candidates,
    parse_list,
    read_list,
    scan_candidates,
    sorted_skipped,
    top_folder_label,
    unsupported_extension,
    walk_files,
)


@dataclass
class ImageSet:
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    # ---- construction

    @classmethod
    def from_folder(cls, root: str | Path, **options: Any) -> ImageSet:
        """All images under root, recursively, in sorted path order.

        With labels_from_folders, an image's label is its first-level sub-folder under root
        (deeper folders belong to their top category; files directly in root get None).
        Hidden files and folders and OS clutter (Thumbs.db, desktop.ini) are ignored; other
        files with a non-image extension are listed in skipped. ``options``: the fields of
        :class:`ScanSettings`.
        """
        settings = ScanSettings(**options)
        root = Path(root).expanduser().absolute()
        if not root.is_dir():
            raise NotADirectoryError(
                f"image folder {str(root)!r} does not exist or is not a folder"
            )
        files, skipped = walk_files(root)
        candidates: list[Candidate] = []
        for path in files:
            refused = unsupported_extension(str(path), path.suffix.lower())
            if refused is not None:
                skipped.append(refused)
                continue
            label = top_folder_label(path, root) if settings.labels_from_folders else None
            candidates.append((path, label))
        records, unusable = scan_candidates(candidates, settings, str(root))
        return cls(records, sorted_skipped(skipped + unusable))

    @classmethod
    def from_list(cls, list_path: str | Path, **options: Any) -> ImageSet:
        """Images named in a list file, in list order.

        A .csv has a header with a ``path`` column and optionally ``label``; a .txt has one
        path per line (blank lines and lines starting with # are ignored). Relative paths are
        read from the list file's folder. Listed files are judged by content, not extension.
        With labels_from_folders and no label column, a relative path's first folder is its
        label. Entries may be s3:// or gs:// URIs, and the list itself may live in a bucket
        (its plain entries are then keys next to it). ``options``: the fields of
        :class:`ScanSettings`.
        """
        settings = ScanSettings(**options)
        base: Path | str
        if remote.is_remote(str(list_path)):
            name = str(list_path)
            base = remote.parent(name)
            try:
                text = remote.read_text(name, settings.storage_options)
            except FileNotFoundError:
                raise FileNotFoundError(f"list file {name!r} does not exist") from None
            entries = parse_list(text, name)
        else:
            local = Path(list_path).expanduser().absolute()
            name, base = str(local), local.parent
            entries = read_list(local)
        candidates, duplicates = list_candidates(entries, base, settings.labels_from_folders)
        records, skipped = scan_candidates(candidates, settings, name)
        return cls(records, skipped + duplicates)

    @classmethod
    def from_prefix(cls, uri: str, **options: Any) -> ImageSet:
        """All images below an ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

        The remote twin of ``from_folder``: the same extensions, hidden names and labels
        (the first "folder" below the prefix), the same probe and content hash, so a bucket
        and a local copy of it give the same records (in the same order) and share cached
        features. The listing is consumed lazily, page by page, while objects are read; every
        object is read once here (hash + header) and once more during extraction. More
        threads than for local disks by default (16): each read waits on the network.
        ``options``: the fields of :class:`ScanSettings` (``storage_options`` go to s3fs /
        gcsfs, see ``rayclust.remote``).
        """
        settings = ScanSettings(**{"num_threads": 16, **options})
        root = remote.check_uri(str(uri)).rstrip("/")
        skipped: list[SkippedImage] = []

        def candidates() -> Iterator[Candidate]:
            found = bucket_candidates(root, settings.storage_options, settings.labels_from_folders)
            for item in found:
                if isinstance(item, SkippedImage):
                    skipped.append(item)
                else:
                    yield item

        records, unusable = scan_candidates(candidates(), settings, root)
        # Listing order is the store's (byte order of keys); sort as from_folder does.
        records.sort(key=lambda record: remote.relative_parts(record.path, root))
        return cls(records, sorted_skipped(skipped + unusable))

    @classmethod
    def from_source(
        cls,
        source: str | Path,
        labels_from_folders: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        num_threads: int = 4,
        storage_options: Mapping[str, Any] | None = None,
    ) -> ImageSet:
        """A folder, a list file, or an ``s3://`` / ``gs://`` prefix (or list file in a
        bucket); raises FileNotFoundError if it does not exist, CollectionError if it holds
        no usable image or is a list file that cannot be read as one."""
        text = str(source)
        options: dict[str, Any] = dict(
            labels_from_folders=labels_from_folders,
            max_pixels=max_pixels,
            progress=progress,
            num_threads=num_threads,
            storage_options=storage_options,
        )
        if "://" in text:
            remote.check_uri(text)
            is_list = posixpath.splitext(text)[1].lower() in (".csv", ".txt")
            if is_list and remote.is_file(text, storage_options):
                image_set = cls.from_list(text, **options)
            else:
                options["num_threads"] = max(num_threads, 16)  # network reads: more in flight
                image_set = cls.from_prefix(text, **options)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"image source {text!r} does not exist")
            if path.is_dir():
                image_set = cls.from_folder(path, **options)
            else:
                image_set = cls.from_list(path, **options)
        if not image_set.records:
            raise CollectionError(
                f"image source {text!r} has no usable images"
                f" ({len(image_set.skipped)} files skipped"
                + (
                    f", e.g. {image_set.skipped[0].path}: {image_set.skipped[0].reason})"
                    if image_set.skipped
                    else ")"
                )
            )
        return image_set

    # ---- views of the set

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def paths(self) -> list[str]:
        return [record.path for record in self.records]

    @property
    def image_ids(self) -> list[str]:
        return [record.image_id for record in self.records]

    @property
    def labels(self) -> list[str | None]:
        return [record.label for record in self.records]

    @property
    def has_labels(self) -> bool:
        """True when every record has a label (what external scores need)."""
        return bool(self.records) and all(record.label is not None for record in self.records)

    @property
    def label_names(self) -> list[str]:
        """Distinct labels, sorted; the index of a name is its code in label_codes()."""
        return sorted({record.label for record in self.records if record.label is not None})

    def label_codes(self) -> np.ndarray:
        """Labels as int64 codes into label_names; -1 where a record has no label."""
        index = {name: code for code, name in enumerate(self.label_names)}
        return np.array([index.get(label, -1) for label in self.labels], dtype=np.int64)

    def without(self, failed: Iterable[SkippedImage]) -> ImageSet:
        """A copy with the given files moved from records to skipped (e.g. decode failures)."""
        failed = list(failed)
        failed_paths = {item.path for item in failed}
        kept = [record for record in self.records if record.path not in failed_paths]
        return ImageSet(kept, self.skipped + failed)

    # ---- files

    def write_manifest(self, path: str | Path) -> Path:
        """CSV with columns path,image_id,label (empty label when there is none)."""
        return write_csv(
            path,
            ("path", "image_id", "label"),
            ((r.path, r.image_id, r.label or "") for r in self.records),
        )

    def write_skipped(self, path: str | Path) -> Path:
        """CSV with columns path,reason,stage."""
        return write_csv(
            path, ("path", "reason", "stage"), ((s.path, s.reason, s.stage) for s in self.skipped)
        )
