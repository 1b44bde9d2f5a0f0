"""Image collections: discovery, content hashing and robust decoding.

Interface (owned by images work; other modules rely on these names):
- ImageRecord(path, image_id, label): one usable image; image_id is a content hash.
- SkippedImage(path, reason, stage): a file that was not used, and why.
- ImageSet(records, skipped): from_folder / from_list / from_source; write_manifest /
  write_skipped; labels, label_names, label_codes().
- decode_image(source, max_pixels, target_size) -> RGB PIL image, or raises
  ImageDecodeError(reason). Pass the model's resize size as target_size: big JPEGs then
  decode at reduced scale (5-8x faster on a 40 MP photo).
- probe_image(data, max_pixels) -> (format, width, height) from the header alone.
- content_id(bytes), to_rgb(image), DEFAULT_MAX_PIXELS, ALLOWED_FORMATS, IMAGE_EXTENSIONS.

Two stages may reject a file. The *scan* reads every file once (content hash + a header
probe that never decodes pixels), so bombs and non-images are refused cheaply. The *decode*
stage (during extraction) finds what only a full decode reveals: truncated or corrupt pixel
data. Both record a short, human reason.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import posixpath
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from rayclust import remote

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb threshold

# Real raster formats only: Pillow can also parse EPS (runs Ghostscript), PSD, ICNS, XBM,
# SPIDER and more, none of which belong in a photo collection. JPEG comes first because its
# opener also recognises MPO (multi-picture JPEG from phones and cameras).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".mpo"}
)
# OS clutter that nobody wants listed as "skipped" (hidden names are ignored as well).
IGNORED_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"})
LOG_EVERY_S = 10.0  # plain progress lines when stderr is not a terminal
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; str(err) is the reason recorded in skipped.csv."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    image_id: str
    label: str | None = None


@dataclass(frozen=True)
class SkippedImage:
    path: str
    reason: str
    stage: str = "scan"  # "scan" (discovery / header) or "decode" (full decode during extraction)


def content_id(data: bytes) -> str:
    """Identity of an image by content (blake2b-128), so renamed or copied files share features."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- decoding


# Filters that silence Pillow while we decode: our max_pixels decides what is too big and a
# failure becomes an ImageDecodeError, so Pillow's warnings (bomb, corrupt EXIF, palette
# transparency) would only be log noise.
_PILLOW_FILTERS = (
    ("ignore", None, Image.DecompressionBombWarning, None, 0),
    ("ignore", None, Warning, re.compile(r"PIL\."), 0),
)
_quiet_lock = threading.Lock()
_quiet_users = 0


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings while any thread decodes.

    warnings.catch_warnings() is not thread-safe (extraction decodes in a thread pool): two
    threads that interleave restore each other's saved state and can leave a filter behind
    for good. So the first user adds our two filters and the last one removes exactly them,
    leaving filters that other code added meanwhile alone.
    """
    global _quiet_users
    with _quiet_lock:
        if _quiet_users == 0:
            warnings.filters[:0] = _PILLOW_FILTERS
            _filters_changed()
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                for entry in _PILLOW_FILTERS:
                    with contextlib.suppress(ValueError):
                        warnings.filters.remove(entry)
                _filters_changed()


def _filters_changed() -> None:
    # Editing warnings.filters in place should invalidate the "already warned" caches, as
    # warnings.filterwarnings() does internally (private hook; absent elsewhere is harmless).
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()


def _open_restricted(fp: IO[bytes], filename: str = "") -> ImageFile.ImageFile:
    """Identify an image among ALLOWED_FORMATS and read its header, without decoding pixels.

    Unlike ``Image.open`` this skips Pillow's global MAX_IMAGE_PIXELS check, which would refuse
    (or warn about) sizes that our own ``max_pixels`` may allow; the caller checks the size.
    """
    Image.preinit()
    prefix = fp.read(16)
    problem = ""
    for fmt in ALLOWED_FORMATS:
        if fmt not in Image.OPEN:
            Image.init()
        if fmt not in Image.OPEN:
            continue  # a Pillow built without this codec (e.g. WEBP)
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):
            continue
        fp.seek(0)
        try:
            return factory(fp, filename)
        except EOFError:
            problem = f"truncated {fmt} header"
        except Image.DecompressionBombError as exc:  # raised by a few plugins on open
            problem = f"too large for Pillow: {exc}"
        except Exception as exc:  # SyntaxError, struct.error, OSError... all mean a bad header
            problem = f"corrupt {fmt} header: {exc or type(exc).__name__}"
    if problem:
        raise ImageDecodeError(problem)
    raise ImageDecodeError(f"not a supported image format ({', '.join(ALLOWED_FORMATS)})")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"empty image: {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"decompression bomb: {width}x{height} = {width * height / 1e6:.1f} MP"
            f" > limit {max_pixels / 1e6:.1f} MP"
        )


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; raises ImageDecodeError with the reason.

    Reads no pixel data, so a 20000x20000 image that is small on disk is refused in
    microseconds and without allocating its pixels.
    """
    with _quiet_pillow():
        img = _open_restricted(io.BytesIO(data))
        _check_size(img.size, max_pixels)
        return str(img.format), img.width, img.height


def _to_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(
        np.uint8
    )


def _integer_image_to_l(img: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips at 255, turning almost every 16-bit pixel white.
    values = np.asarray(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_to_8bit(values, 65535.0))
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low >= 0 and high <= 65535:
        return Image.fromarray(_to_8bit(values, 65535.0))  # 16-bit data held as I
    span = max(high - low, 1)  # arbitrary 32-bit integers: stretch what is there
    return Image.fromarray(_to_8bit(values - low, float(span)))


def _float_image_to_l(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0:
        return Image.fromarray(_to_8bit(values, 1.0))
    return Image.fromarray(_to_8bit(values - low, max(high - low, 1e-12)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency over white, 16-bit and float scaled, CMYK converted."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        return _integer_image_to_l(img).convert("RGB")
    if img.mode == "F":
        return _float_image_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        # Pasting through the alpha band onto an RGB canvas needs one RGB buffer, where
        # alpha_composite would need two more RGBA ones (GBs for a 200 MP image).
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, (0, 0), rgba)
        return rgb
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _describe_load_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in text.lower():
        return f"truncated file: {text}"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large for Pillow: {text}"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return f"corrupt image data: {text}"


def decode_image(
    source: str | Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Image.Image:
    """Fully decode one image to RGB, or raise ImageDecodeError with a short reason.

    source: a path, an s3:// or gs:// URI (read with ``storage_options``, see
    ``rayclust.remote``), or the file's bytes. Only ALLOWED_FORMATS are accepted; the content
    decides, not the extension. The EXIF orientation is applied, transparency is composited on
    white, 16-bit images are scaled (not clipped) to 8 bit, and animations give their first
    frame. A truncated or corrupt file raises: it is never padded, nor replaced by anything.

    target_size: the shortest side the caller needs (e.g. the model's resize size). Big images
    are then decoded at reduced scale (JPEG DCT scaling, otherwise box reduction) with the
    shortest side still >= target_size, so a 40 MP photo costs a fraction of a full decode.
    """
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size={target_size} should be >= 1 or None")
    if remote.is_remote(source):
        try:
            source = remote.read_bytes(source, storage_options)
        except Exception as exc:  # OSError subclasses, or the store's own error types
            raise ImageDecodeError(remote.describe_error(exc)) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        opened: contextlib.AbstractContextManager[IO[bytes]] = io.BytesIO(bytes(source))
        filename = ""
    else:
        filename = os.fspath(source)
        try:
            if os.path.getsize(filename) == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            opened = open(filename, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise ImageDecodeError(_describe_read_error(exc)) from exc

    with opened as fp, _quiet_pillow():
        img = _open_restricted(fp, filename)
        _check_size(img.size, max_pixels)
        if target_size is not None:
            img.draft(None, (target_size, target_size))  # a no-op except for JPEG
        try:
            img.load()
            # Orientation may live in an EXIF chunk after the pixel data, so read it before
            # the file closes.
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
        except ImageDecodeError:
            raise
        except Exception as exc:  # Pillow signals bad data with many exception types
            raise ImageDecodeError(_describe_load_error(exc)) from exc
    if target_size is not None:
        factor = min(rgb.size) // target_size
        if factor >= 2:
            rgb = rgb.reduce(factor)
    return rgb


# --------------------------------------------------------------------------- scanning


def _describe_read_error(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "cannot read file: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    return f"cannot read file: {exc.strerror or exc}"


def _read_candidate(path: Path | str, storage_options: Mapping[str, Any] | None) -> bytes:
    if isinstance(path, str) and remote.is_remote(path):
        return remote.read_bytes(path, storage_options)
    return Path(path).read_bytes()


def _describe_candidate_error(path: Path | str, exc: Exception) -> str:
    if isinstance(path, str) and remote.is_remote(path):
        return remote.describe_error(exc)
    return _describe_read_error(exc)


def _scan_one(
    path: Path | str,
    label: str | None,
    max_pixels: int,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageRecord | SkippedImage:
    """Hash and probe one file or object (a local Path, or an s3:// / gs:// URI string)."""
    try:
        data = _read_candidate(path, storage_options)
    except Exception as exc:  # OSError locally; remote stores raise their own kinds too
        return SkippedImage(str(path), _describe_candidate_error(path, exc), "scan")
    if not data:
        return SkippedImage(str(path), "empty file (0 bytes)", "scan")
    try:
        probe_image(data, max_pixels)
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


def _scan(
    candidates: Iterable[tuple[Path | str, str | None]],
    max_pixels: int,
    progress: bool,
    num_threads: int,
    what: str,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[ImageRecord], list[SkippedImage]]:
    """Scan in input order; threads overlap file reads (reads and hashing release the GIL).

    ``candidates`` may be a lazy iterator (a remote listing arriving page by page): it is
    consumed a window at a time, so reading starts before the listing ends and no more than
    a window of candidates waits in memory. Progress: a bar in a terminal; otherwise (CI
    logs) a plain log line every LOG_EVERY_S.
    """
    from tqdm.auto import tqdm

    started = last_line = time.perf_counter()
    show_bar = progress and sys.stderr.isatty()
    total = len(candidates) if isinstance(candidates, Sized) else None
    of_total = f"/{total}" if total is not None else ""
    window = max(64, 16 * max(1, num_threads))
    records: list[ImageRecord] = []
    skipped: list[SkippedImage] = []
    done = 0
    with (
        _quiet_pillow(),  # entered once here, not per thread
        ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool,
        tqdm(total=total, desc=f"scanning {what}", unit="file", disable=not show_bar) as bar,
    ):
        for chunk in _chunks(candidates, window):
            results = pool.map(
                lambda item: _scan_one(item[0], item[1], max_pixels, storage_options), chunk
            )
            for result in results:
                done += 1
                (records if isinstance(result, ImageRecord) else skipped).append(result)
                bar.update(1)
                if progress and not show_bar and time.perf_counter() - last_line > LOG_EVERY_S:
                    last_line = time.perf_counter()
                    logger.info("scanning %s: %d%s files", what, done, of_total)
    if progress:
        logger.info(
            "scanned %s: %d images, %d skipped, %.1f s",
            what,
            len(records),
            len(skipped),
            time.perf_counter() - started,
        )
    return records, skipped


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _walk_files(root: Path) -> tuple[list[Path], list[SkippedImage]]:
    """Every visible file under root (following folder links once), sorted by path parts."""
    files: list[Path] = []
    problems: list[SkippedImage] = []
    seen_folders: set[str] = set()

    def on_error(exc: OSError) -> None:
        problems.append(
            SkippedImage(str(exc.filename), f"cannot list folder: {_describe_read_error(exc)}")
        )

    for folder, subfolders, names in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:  # a link back up the tree (or a second link to one folder)
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders[:] = sorted(name for name in subfolders if not _is_ignored(name))
        files.extend(Path(folder, name) for name in names if not _is_ignored(name))
    files.sort(key=lambda path: path.relative_to(root).parts)
    return files, problems


def _top_folder_label(path: Path, root: Path) -> str | None:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return None  # outside the root: no top folder to name it
    return parts[0] if len(parts) > 1 else None


@dataclass
class ImageSet:
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    # ---- construction

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        labels_from_folders: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        num_threads: int = 4,
    ) -> ImageSet:
        """All images under root, recursively, in sorted path order.

        With labels_from_folders, an image's label is its first-level sub-folder under root
        (deeper folders belong to their top category; files directly in root get None).
        Hidden files and folders and OS clutter (Thumbs.db, desktop.ini) are ignored; other
        files with a non-image extension are listed in skipped.
        """
        root = Path(root).expanduser().absolute()
        if not root.is_dir():
            raise NotADirectoryError(
                f"image folder {str(root)!r} does not exist or is not a folder"
            )
        files, skipped = _walk_files(root)
        candidates: list[tuple[Path, str | None]] = []
        for path in files:
            suffix = path.suffix.lower()
            if suffix not in IMAGE_EXTENSIONS:
                reason = f"not an image file extension: {suffix or '(none)'}"
                skipped.append(SkippedImage(str(path), reason, "scan"))
                continue
            label = _top_folder_label(path, root) if labels_from_folders else None
            candidates.append((path, label))
        records, unusable = _scan(candidates, max_pixels, progress, num_threads, str(root))
        return cls(records, _sorted_skipped(skipped + unusable))

    @classmethod
    def from_list(
        cls,
        list_path: str | Path,
        labels_from_folders: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        num_threads: int = 4,
        storage_options: Mapping[str, Any] | None = None,
    ) -> ImageSet:
        """Images named in a list file, in list order.

        A .csv has a header with a ``path`` column and optionally ``label``; a .txt has one
        path per line (blank lines and lines starting with # are ignored). Relative paths are
        read from the list file's folder. Listed files are judged by content, not extension.
        With labels_from_folders and no label column, a relative path's first folder is its
        label. Entries may be s3:// or gs:// URIs, and the list itself may live in a bucket
        (its plain entries are then keys next to it).
        """
        if remote.is_remote(str(list_path)):
            return cls._from_remote_list(
                str(list_path), labels_from_folders, max_pixels, progress, num_threads,
                storage_options,
            )  # fmt: skip
        list_path = Path(list_path).expanduser().absolute()
        base = list_path.parent
        entries = _read_list(list_path)
        candidates: list[tuple[Path | str, str | None]] = []
        for raw_path, label in entries:
            if remote.is_remote(raw_path):  # a local list may name objects in a bucket
                candidates.append((raw_path, label))
                continue
            path = Path(raw_path).expanduser()
            path = path if path.is_absolute() else base / path
            if label is None and labels_from_folders:
                label = _top_folder_label(path, base)
            candidates.append((path, label))
        records, skipped = _scan(
            candidates, max_pixels, progress, num_threads, str(list_path), storage_options
        )
        return cls(records, skipped)

    @classmethod
    def _from_remote_list(
        cls,
        list_uri: str,
        labels_from_folders: bool,
        max_pixels: int,
        progress: bool,
        num_threads: int,
        storage_options: Mapping[str, Any] | None,
    ) -> ImageSet:
        base = remote.parent(list_uri)
        try:
            text = remote.read_text(list_uri, storage_options)
        except FileNotFoundError:
            raise FileNotFoundError(f"list file {list_uri!r} does not exist") from None
        entries = _parse_list(text, list_uri)
        candidates: list[tuple[Path | str, str | None]] = []
        for raw_path, label in entries:
            # In a list that lives in a bucket, plain paths are keys next to the list.
            uri = raw_path if remote.is_remote(raw_path) else remote.join(base, raw_path)
            if label is None and labels_from_folders and uri.startswith(base + "/"):
                parts = remote.relative_parts(uri, base)
                label = parts[0] if len(parts) > 1 else None
            candidates.append((uri, label))
        records, skipped = _scan(
            candidates, max_pixels, progress, num_threads, list_uri, storage_options
        )
        return cls(records, skipped)

    @classmethod
    def from_prefix(
        cls,
        uri: str,
        labels_from_folders: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        num_threads: int = 16,
        storage_options: Mapping[str, Any] | None = None,
    ) -> ImageSet:
        """All images below an ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

        The remote twin of ``from_folder``: the same extensions, hidden names and labels
        (the first "folder" below the prefix), the same probe and content hash, so a bucket
        and a local copy of it give the same records (in the same order) and share cached
        features. The listing is consumed lazily, page by page, while objects are read; every
        object is read once here (hash + header) and once more during extraction. More
        threads than for local disks by default: each read waits on the network.
        ``storage_options`` go to s3fs / gcsfs (see ``rayclust.remote``).
        """
        root = remote.check_uri(str(uri)).rstrip("/")
        skipped: list[SkippedImage] = []

        def candidates() -> Iterator[tuple[str, str | None]]:
            for obj in remote.iter_objects(root, storage_options):
                parts = remote.relative_parts(obj.uri, root)
                if not parts or any(_is_ignored(part) for part in parts):
                    continue
                suffix = posixpath.splitext(parts[-1])[1].lower()
                if suffix not in IMAGE_EXTENSIONS:
                    reason = f"not an image file extension: {suffix or '(none)'}"
                    skipped.append(SkippedImage(obj.uri, reason, "scan"))
                    continue
                if obj.size == 0:
                    skipped.append(SkippedImage(obj.uri, "empty file (0 bytes)", "scan"))
                    continue
                label = parts[0] if labels_from_folders and len(parts) > 1 else None
                yield obj.uri, label

        records, unusable = _scan(
            candidates(), max_pixels, progress, num_threads, root, storage_options
        )
        # Listing order is the store's (byte order of keys); sort as from_folder does.
        records.sort(key=lambda record: remote.relative_parts(record.path, root))
        return cls(records, _sorted_skipped(skipped + unusable))

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
        bucket); raises if it does not exist or holds no usable image."""
        text = str(source)
        options = dict(
            labels_from_folders=labels_from_folders,
            max_pixels=max_pixels,
            progress=progress,
            num_threads=num_threads,
        )
        if "://" in text:
            remote.check_uri(text)
            is_list = posixpath.splitext(text)[1].lower() in (".csv", ".txt")
            if is_list and remote.is_file(text, storage_options):
                image_set = cls.from_list(text, storage_options=storage_options, **options)
            else:
                options["num_threads"] = max(num_threads, 16)  # network reads: more in flight
                image_set = cls.from_prefix(text, storage_options=storage_options, **options)
        else:
            path = Path(text).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"image source {text!r} does not exist")
            if path.is_dir():
                image_set = cls.from_folder(path, **options)
            else:
                image_set = cls.from_list(path, **options)
        if not image_set.records:
            raise ValueError(
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
        return _write_csv(
            path,
            ("path", "image_id", "label"),
            ((r.path, r.image_id, r.label or "") for r in self.records),
        )

    def write_skipped(self, path: str | Path) -> Path:
        """CSV with columns path,reason,stage."""
        return _write_csv(
            path, ("path", "reason", "stage"), ((s.path, s.reason, s.stage) for s in self.skipped)
        )


def _sorted_skipped(skipped: list[SkippedImage]) -> list[SkippedImage]:
    return sorted(skipped, key=lambda item: Path(item.path).parts)


def _read_list(list_path: Path) -> list[tuple[str, str | None]]:
    _list_suffix(str(list_path))  # refuse other files before reading them
    text = list_path.read_text(encoding="utf-8-sig")  # tolerate Excel's byte-order mark
    return _parse_list(text, str(list_path))


def _list_suffix(name: str) -> str:
    suffix = posixpath.splitext(name)[1].lower()
    if suffix not in (".csv", ".txt"):
        raise ValueError(
            f"list file {name!r} should end in .csv (path[,label]) or .txt"
            f" (one path per line), not {suffix or '(no extension)'}"
        )
    return suffix


def _parse_list(text: str, name: str) -> list[tuple[str, str | None]]:
    suffix = _list_suffix(name)
    list_path = name  # named in the errors below
    if suffix == ".txt":
        lines = (line.strip() for line in text.splitlines())
        return [(line, None) for line in lines if line and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO(text))
    columns = [column.strip() for column in reader.fieldnames or []]
    if "path" not in columns:
        raise ValueError(
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


def _write_csv(path: str | Path, header: tuple[str, ...], rows: Iterable[tuple]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
