"""FeatureStore: the on-disk cache of one view's features, keyed by image content id.

Layout of ``<root>/<spec_key>/``::

    meta.json                  view spec, feature dim, dtype
    shard-<hash>.npy           float32 [m, dim] features
    shard-<hash>.ids.json      the m image ids of that shard, row by row
    failures-<hash>.json       {image_id: reason} for images that could not be decoded

Crash safety: every file is written to a temporary name and moved into place with
``os.replace``, and a shard counts only once its ``.ids.json`` exists, which is written
after its ``.npy``. A process killed at any point leaves either a whole shard or one that
is ignored (an orphan ``.npy`` without ids, or a ``.*.tmp`` file).

Idempotence: a shard's name is a hash of its ids, so re-writing the same batch (a retried
task) produces the same file names and replaces them instead of adding a second copy.

Duplicates: an id found in several shards (two processes filled the same cache, or a crash
between writes) is served from the first shard in (modification time, name) order - the
oldest copy wins; later copies are ignored. Features of one id under one spec key are the
same whichever copy is read, so this only decides which file the rows come from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

DTYPE = np.dtype("float32")
_SHARD_PREFIX = "shard-"
_IDS_SUFFIX = ".ids.json"
_FAILURES_PREFIX = "failures-"


def default_cache_dir() -> Path:
    """Where features are cached when no folder is configured."""
    env = os.environ.get("RAYCLUST_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rayclust" / "features"


def _content_hash(ids: Sequence[str]) -> str:
    digest = hashlib.blake2b(digest_size=10)
    for image_id in ids:
        digest.update(image_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _describe_missing(missing: list[str], requested: int) -> str:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return f"{len(missing)} of {requested} requested ids have no stored features (first: {shown})"


class FeatureStore:
    """Features of one view, cached on disk by image content id.

    Parameters
    ----------
    root : cache root; the store lives in ``root/spec_key``.
    spec_key : ``ViewSpec.key()`` of the view the features come from.
    dim : feature dimension. Needed to create a store; checked against ``meta.json`` when
        the store exists. ``None`` opens an existing store (or lets the first ``write`` set it).
    spec : the view spec (a dataclass or dict), recorded in ``meta.json`` for people reading
        the cache; it does not affect lookups.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        spec_key: str,
        dim: int | None = None,
        spec: Any = None,
    ) -> None:
        if not spec_key or "/" in spec_key or spec_key in (".", ".."):
            raise ValueError(f"spec_key={spec_key!r} should be a plain, non-empty name")
        self.root = Path(root)
        self.spec_key = spec_key
        self.path = self.root / spec_key
        self.path.mkdir(parents=True, exist_ok=True)
        self._spec = asdict(spec) if is_dataclass(spec) else spec
        self.dim: int | None = None
        meta = self._read_meta()
        if meta is not None:
            self.dim = int(meta["dim"])
            if dim is not None and dim != self.dim:
                raise ValueError(
                    f"dim={dim} does not match the stored feature dim={self.dim} in "
                    f"{self.path / 'meta.json'}; a different view should have a different spec_key"
                )
        elif dim is not None:
            self._write_meta(dim)
        self.refresh()

    # -- metadata -------------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("dtype", DTYPE.name) != DTYPE.name:
            raise ValueError(f"{meta_path} has dtype={meta['dtype']}, expected {DTYPE.name}")
        return meta

    def _write_meta(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim={dim} should be >= 1")
        meta = {"spec_key": self.spec_key, "spec": self._spec, "dim": int(dim), "dtype": DTYPE.name}
        _atomic_write_bytes(self.path / "meta.json", json.dumps(meta, indent=2).encode())
        self.dim = int(dim)

    # -- index ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the folder: picks up shards and failures written by other processes."""
        entries = []
        for ids_path in self.path.glob(f"{_SHARD_PREFIX}*{_IDS_SUFFIX}"):
            npy_path = ids_path.with_name(ids_path.name[: -len(_IDS_SUFFIX)] + ".npy")
            if npy_path.is_file():
                entries.append((ids_path.stat().st_mtime_ns, ids_path.name, ids_path, npy_path))
        entries.sort()
        self._shard_paths: list[Path] = []
        self._shard_arrays: list[np.ndarray | None] = []
        self._index: dict[str, tuple[int, int]] = {}
        for _, _, ids_path, npy_path in entries:
            shard_ids = json.loads(ids_path.read_text())
            shard = len(self._shard_paths)
            self._shard_paths.append(npy_path)
            self._shard_arrays.append(None)
            for row, image_id in enumerate(shard_ids):
                self._index.setdefault(image_id, (shard, row))  # first copy wins
        self._failures: dict[str, str] = {}
        for fail_path in sorted(self.path.glob(f"{_FAILURES_PREFIX}*.json")):
            for image_id, reason in json.loads(fail_path.read_text()).items():
                self._failures.setdefault(image_id, reason)

    def _array(self, shard: int) -> np.ndarray:
        array = self._shard_arrays[shard]
        if array is None:
            array = np.load(self._shard_paths[shard], mmap_mode="r")
            self._shard_arrays[shard] = array
        return array

    @property
    def n_shards(self) -> int:
        return len(self._shard_paths)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def ids(self) -> list[str]:
        """Every stored id, in shard order."""
        return list(self._index)

    def missing(self, ids: Iterable[str], include_failed: bool = False) -> list[str]:
        """Ids still to extract: no stored features and (unless include_failed) no recorded
        decode failure. Unique, in first-seen order."""
        seen: set[str] = set()
        out = []
        for image_id in ids:
            if image_id in seen or image_id in self._index:
                continue
            if not include_failed and image_id in self._failures:
                continue
            seen.add(image_id)
            out.append(image_id)
        return out

    # -- reading --------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Features of ``ids`` as float32 [len(ids), dim], rows in the requested order.

        Repeated ids give repeated rows. Any id without features raises KeyError.
        """
        ids = list(ids)
        locations = [self._index.get(image_id) for image_id in ids]
        absent = [image_id for image_id, loc in zip(ids, locations, strict=True) if loc is None]
        if absent:
            raise KeyError(_describe_missing(absent, len(ids)))
        if self.dim is None:  # empty store and an empty request
            return np.empty((0, 0), dtype=DTYPE)
        out = np.empty((len(ids), self.dim), dtype=DTYPE)
        if not ids:
            return out
        shards = np.fromiter((loc[0] for loc in locations), dtype=np.int64, count=len(ids))
        rows = np.fromiter((loc[1] for loc in locations), dtype=np.int64, count=len(ids))
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            out[positions] = self._array(int(shard))[rows[positions]]
        return out

    # -- writing --------------------------------------------------------------------------

    def write(self, ids: Sequence[str], features: np.ndarray) -> int:
        """Store features for ids as one new shard; returns how many rows were added.

        Ids already stored, and repeats inside ``ids`` after the first, are dropped, so
        each id is stored once however often it is written.
        """
        ids = list(ids)
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != len(ids):
            raise ValueError(
                f"features.shape={features.shape} should be (len(ids)={len(ids)}, dim)"
            )
        if self.dim is None:
            self._write_meta(features.shape[1])
        if features.shape[1] != self.dim:
            raise ValueError(f"features have dim={features.shape[1]}, the store has dim={self.dim}")
        keep: list[int] = []
        new_ids: list[str] = []
        seen: set[str] = set()
        for row, image_id in enumerate(ids):
            if not isinstance(image_id, str):
                raise TypeError(f"image ids should be str, got {type(image_id).__name__}")
            if image_id in self._index or image_id in seen:
                continue
            seen.add(image_id)
            keep.append(row)
            new_ids.append(image_id)
        if not new_ids:
            return 0
        rows = np.ascontiguousarray(features[keep], dtype=DTYPE)
        name = _SHARD_PREFIX + _content_hash(new_ids)
        npy_path = self.path / f"{name}.npy"
        ids_path = self.path / f"{name}{_IDS_SUFFIX}"
        # Features first, ids last: the ids file is what makes the shard count.
        _atomic_save_npy(npy_path, rows)
        _atomic_write_bytes(ids_path, json.dumps(new_ids).encode())
        shard = len(self._shard_paths)
        self._shard_paths.append(npy_path)
        self._shard_arrays.append(None)
        for row, image_id in enumerate(new_ids):
            self._index[image_id] = (shard, row)
        return len(new_ids)

    def compact(self) -> int:
        """Merge every shard into one (streamed through a memory map); returns shards removed.

        Many small shards (one per extraction batch) make opening slow on big collections;
        one shard is one memory-mapped array. Crash-safe like ``write``: the merged shard is
        complete before the old ones are deleted, and left-over old shards only hold copies.
        Run it when no other process is reading or writing this store.
        """
        old_paths = list(self._shard_paths)
        if len(old_paths) <= 1:
            return 0
        ids = list(self._index)
        name = _SHARD_PREFIX + _content_hash(ids)
        npy_path = self.path / f"{name}.npy"
        ids_path = self.path / f"{name}{_IDS_SUFFIX}"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{npy_path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            merged = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=DTYPE, shape=(len(ids), self.dim)
            )
            chunk = 65_536
            for start in range(0, len(ids), chunk):
                merged[start : start + chunk] = self.get(ids[start : start + chunk])
            merged.flush()
            del merged
            os.replace(tmp, npy_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _atomic_write_bytes(ids_path, json.dumps(ids).encode())
        self._shard_arrays = []  # drop memory maps before deleting their files
        for old in old_paths:
            if old != npy_path:
                old.with_name(old.name[: -len(".npy")] + _IDS_SUFFIX).unlink(missing_ok=True)
                old.unlink(missing_ok=True)
        self.refresh()
        return len(old_paths) - 1

    # -- decode failures ------------------------------------------------------------------

    def record_failures(self, failures: Mapping[str, str]) -> None:
        """Remember images that could not be decoded, so later runs do not retry them."""
        new = {k: str(v) for k, v in failures.items() if k not in self._failures}
        if not new:
            return
        name = _FAILURES_PREFIX + _content_hash(sorted(new)) + ".json"
        _atomic_write_bytes(self.path / name, json.dumps(new, indent=0).encode())
        self._failures.update(new)

    def failures(self) -> dict[str, str]:
        """{image_id: reason} of every recorded decode failure."""
        return dict(self._failures)

    def __repr__(self) -> str:
        return (
            f"FeatureStore(path={str(self.path)!r}, n_ids={len(self)}, dim={self.dim}, "
            f"n_shards={self.n_shards}, n_failures={len(self._failures)})"
        )
