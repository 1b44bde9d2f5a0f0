"""The files of one FeatureStore folder: a local folder, or a bucket prefix (s3://, gs://).

``FeatureStore`` names its files relative to its folder and goes through :func:`open_folder`;
the two kinds give the same guarantees by different means:

- local: a write goes to a temporary file moved into place (``os.replace``); arrays are
  memory-mapped; a file's sha256 is remembered per (path, size, mtime), so it is hashed
  once per process;
- bucket: one PUT per file is already atomic (readers see the old object or the whole new
  one), so the store's write order (features, checksums, ids last) keeps a shard invisible
  until its ids object exists; an array is downloaded and loaded from memory (no mmap); the
  bytes hashed for a check are kept until the array is loaded, so a shard is read once.
  Setting aside is a copy and a delete (a store has no rename).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rayclust import remote

DAMAGED_SUFFIX = ".damaged"

# (path, size, mtime_ns) -> sha256 of local files hashed (or written) by this process.
_KNOWN_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the store's folder
    mtime: int  # sortable: ns since the epoch (a bucket's LastModified has 1 s resolution)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def open_folder(root: str | os.PathLike, name: str, storage_options: Mapping[str, Any] | None):
    """The files of ``root/name``: a bucket prefix when ``root`` is an s3:// / gs:// URI."""
    if isinstance(root, str) and remote.scheme_of(root) is not None:
        return BucketFolder(f"{remote.check_uri(root).rstrip('/')}/{name}", storage_options)
    return LocalFolder(Path(root) / name)


class LocalFolder:
    remote = False

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def where(self, name: str) -> str:
        return str(self.path / name)

    def list(self, pattern: str) -> list[Entry]:
        entries = []
        for path in self.path.glob(pattern):
            try:
                entries.append(Entry(path.name, path.stat().st_mtime_ns))
            except FileNotFoundError:  # removed since the listing (compact elsewhere)
                continue
        return entries

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, data: bytes) -> str:
        """Write atomically; returns (and remembers) the sha256 of ``data``."""
        path = self.path / name
        _atomic_write(path, lambda handle: handle.write(data))
        digest = hashlib.sha256(data).hexdigest()
        _remember_digest(path, digest)
        return digest

    def sha256(self, name: str) -> str:
        return file_sha256(self.path / name)

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.path / name, mmap_mode="r", allow_pickle=False)

    def write_array(self, name: str, shape: tuple[int, int], dtype, fill: Callable) -> str:
        """A [rows, dim] array filled chunk by chunk through a memory map (``fill(target)``),
        moved into place once complete; returns its sha256."""
        path = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(merged)
            merged.flush()
            del merged
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return file_sha256(path)

    def set_aside(self, name: str) -> None:
        """Rename to ``<name>.damaged``; a folder that cannot be changed keeps the file."""
        try:
            os.replace(self.path / name, self.path / (name + DAMAGED_SUFFIX))
        except OSError:
            pass

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class BucketFolder:
    remote = True

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None) -> None:
        self.path = uri
        self.fs = remote.filesystem(uri, storage_options)
        self._key = self.fs._strip_protocol(uri).rstrip("/")
        self._read_for_check: dict[str, bytes] = {}

    def where(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _object(self, name: str) -> str:
        return posixpath.join(self._key, name)

    def list(self, pattern: str) -> list[Entry]:
        # fsspec caches listings; other processes write here, so always ask the store.
        self.fs.invalidate_cache(self._key)
        try:
            infos = self.fs.ls(self._key, detail=True)
        except FileNotFoundError:
            return []
        entries = []
        for info in infos:
            name = posixpath.basename(info["name"].rstrip("/"))
            if info.get("type") == "file" and fnmatch.fnmatchcase(name, pattern):
                entries.append(Entry(name, _mtime_ns(info)))
        return entries

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache(self._key)
        return self.fs.isfile(self._object(name))

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(self._object(name))

    def write(self, name: str, data: bytes) -> str:
        self.fs.pipe_file(self._object(name), data)
        return hashlib.sha256(data).hexdigest()

    def sha256(self, name: str) -> str:
        data = self.read(name)
        if name.endswith(".npy"):  # loaded next by load_array: keep, not download twice
            self._read_for_check[name] = data
        return hashlib.sha256(data).hexdigest()

    def load_array(self, name: str) -> np.ndarray:
        data = self._read_for_check.pop(name, None)
        if data is None:
            data = self.read(name)
        return np.load(io.BytesIO(data), allow_pickle=False)

    def write_array(self, name: str, shape: tuple[int, int], dtype, fill: Callable) -> str:
        merged = np.empty(shape, dtype=dtype)
        fill(merged)
        return self.write(name, npy_bytes(merged))

    def set_aside(self, name: str) -> None:
        """Copy to ``<name>.damaged`` and delete; a bucket that refuses keeps the object."""
        self._read_for_check.pop(name, None)
        try:
            self.fs.copy(self._object(name), self._object(name + DAMAGED_SUFFIX))
            self.fs.rm_file(self._object(name))
        except OSError:
            pass

    def delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._object(name))
        except FileNotFoundError:
            pass


def _mtime_ns(info: Mapping[str, Any]) -> int:
    """A listing entry's modification time (S3: LastModified, GCS: updated), 0 if absent."""
    stamp = info.get("LastModified") or info.get("updated") or info.get("mtime")
    if isinstance(stamp, str):
        try:
            stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return 0
    if isinstance(stamp, datetime):
        return int(stamp.timestamp() * 1e9)
    if isinstance(stamp, (int, float)):
        return int(stamp * 1e9)
    return 0


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then move it into
    place: a reader sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _remember_digest(path: Path, digest: str) -> None:
    try:
        _KNOWN_DIGESTS[_file_key(path)] = digest
    except OSError:
        pass


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (remembered while the file is unchanged)."""
    key = _file_key(path)
    digest = _KNOWN_DIGESTS.get(key)
    if digest is None:
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        digest = _KNOWN_DIGESTS[key] = hasher.hexdigest()
    return digest
