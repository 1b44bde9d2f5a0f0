"""FeatureStore: the on-disk cache of one view's features, keyed by image content id.

Layout of ``<root>/<spec_key>/``::

    meta.json                  view spec, feature dim, dtype
    shard-<hash>.npy           float32 [m, dim] features
    shard-<hash>.sha256        {"npy": sha256 of the .npy bytes, "ids": sha256 of the ids file}
    shard-<hash>.ids.json      the m image ids of that shard, row by row
    failures-<hash>.json       {image_id: reason} for images that could not be decoded

Crash safety: every file is written to a temporary name and moved into place with
``os.replace``, and a shard counts only once its ``.ids.json`` exists, which is written
after its ``.npy``. A process killed at any point leaves either a whole shard or one that
is ignored (an orphan ``.npy`` without ids, or a ``.*.tmp`` file).

Idempotence: a shard's name is a hash of its ids, so re-writing the same batch (a retried
task) produces the same file names and replaces them instead of adding a second copy.

Damage: a shard is checked before its rows are used (``missing`` checks the shards holding
the ids asked for, ``get`` the shards it reads): its name must be the hash of its ids (ids
reordered or edited), its files must match the checksums written with it (features
overwritten, truncated), and the array must be float32 [m, dim]. A shard that fails, or
whose ids file or checksum file cannot be read, is named in a :class:`CacheDamageWarning`,
set aside (its files renamed to ``*.damaged``) and its ids count as missing again, so the
extraction that asked (``missing``) computes them anew. A garbage ``meta.json`` or failures
file is set aside the same way; the dim is then taken from the shards. Shards written
before checksums existed (no ``.sha256``) are checked by name and shape only. Each file is
hashed once per process (its size and modification time are remembered).

Duplicates: an id found in several shards (two processes filled the same cache, or a crash
between writes) is served from the first shard in (modification time, name) order - the
oldest copy wins; later copies are ignored. Features of one id under one spec key are the
same whichever copy is read, so this only decides which file the rows come from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

DTYPE = np.dtype("float32")
_SHARD_PREFIX = "shard-"
_IDS_SUFFIX = ".ids.json"
_SUM_SUFFIX = ".sha256"
_DAMAGED_SUFFIX = ".damaged"
_FAILURES_PREFIX = "failures-"

# (path, size, mtime_ns) -> sha256 of files hashed (or written) by this process.
_KNOWN_DIGESTS: dict[tuple[str, int, int], str] = {}


class CacheDamageWarning(UserWarning):
    """A file of the feature cache was damaged; it was set aside and is rebuilt."""


class _Damaged(Exception):
    """Why a shard or cache file cannot be trusted (the message of the warning)."""


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


def _atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` atomically; returns (and remembers) its sha256."""
    _atomic_write(path, lambda handle: handle.write(data))
    digest = hashlib.sha256(data).hexdigest()
    _remember_digest(path, digest)
    return digest


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


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


def _warn_damaged(path: Path, problem: str, consequence: str) -> None:
    warnings.warn(
        f"feature cache file {path} is damaged ({problem}); {consequence}",
        CacheDamageWarning,
        stacklevel=3,
    )


def _set_aside(*paths: Path) -> None:
    """Rename damaged files to ``<name>.damaged`` (kept for inspection, never read again).
    A cache that cannot be changed (read-only) keeps them: the store then skips them."""
    for path in paths:
        try:
            os.replace(path, path.with_name(path.name + _DAMAGED_SUFFIX))
        except OSError:
            pass


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Damaged(f"not valid JSON: {exc}") from None


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
        *,
        index: bool = True,
    ) -> None:
        """index=False: a writer that does not read the folder's shards (a worker of a
        worker scan writes ``write(..., remember=False)`` shards and reads nothing; opening
        the index would cost every worker ~200 B per stored image)."""
        if not spec_key or "/" in spec_key or spec_key in (".", ".."):
            raise ValueError(f"spec_key={spec_key!r} should be a plain, non-empty name")
        self.root = Path(root)
        self.spec_key = spec_key
        self.path = self.root / spec_key
        self.path.mkdir(parents=True, exist_ok=True)
        self._spec = asdict(spec) if is_dataclass(spec) else spec
        self._damaged: set[Path] = set()  # shards found damaged, skipped even if not renamed
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
        if not index:
            self._empty_index()
            return
        self.refresh()
        if self.dim is None and self._shard_paths:  # meta.json set aside (or lost)
            found = self._dim_from_shards()
            if found is not None:
                self._write_meta(found)

    # -- metadata -------------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = _read_json(meta_path)
            dim = meta.get("dim") if isinstance(meta, dict) else None
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise _Damaged("expected a mapping with an integer dim >= 1")
        except _Damaged as exc:
            _warn_damaged(meta_path, str(exc), "set aside; the dim is taken from the shards")
            _set_aside(meta_path)
            return None
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

    def _empty_index(self) -> None:
        self._shard_paths: list[Path] = []
        self._shard_arrays: list[np.ndarray | None] = []  # set once the shard is checked
        self._shard_rows: list[int] = []
        self._index: dict[str, tuple[int, int]] = {}

    def refresh(self) -> None:
        """Re-read the folder: picks up shards and failures written by other processes.

        Shards whose ids file is unreadable or does not hash to the shard's name are set
        aside here (named in a :class:`CacheDamageWarning`); their features are checked
        when first needed (:meth:`missing`, :meth:`get`).
        """
        entries = []
        for ids_path in self.path.glob(f"{_SHARD_PREFIX}*{_IDS_SUFFIX}"):
            npy_path = ids_path.with_name(ids_path.name[: -len(_IDS_SUFFIX)] + ".npy")
            if npy_path.is_file() and npy_path not in self._damaged:
                entries.append((ids_path.stat().st_mtime_ns, ids_path.name, ids_path, npy_path))
        entries.sort()
        self._empty_index()
        for _, _, ids_path, npy_path in entries:
            try:
                shard_ids = _read_json(ids_path)
                if not isinstance(shard_ids, list) or not all(
                    isinstance(image_id, str) for image_id in shard_ids
                ):
                    raise _Damaged("expected a JSON list of image ids")
                if ids_path.name != _SHARD_PREFIX + _content_hash(shard_ids) + _IDS_SUFFIX:
                    raise _Damaged("its ids do not hash to the shard's name: reordered or edited")
            except _Damaged as exc:
                self._discard(npy_path, str(exc), ids_path)
                continue
            shard = len(self._shard_paths)
            self._shard_paths.append(npy_path)
            self._shard_arrays.append(None)
            self._shard_rows.append(len(shard_ids))
            for row, image_id in enumerate(shard_ids):
                self._index.setdefault(image_id, (shard, row))  # first copy wins
        self._failures: dict[str, str] = {}
        for fail_path in sorted(self.path.glob(f"{_FAILURES_PREFIX}*.json")):
            try:
                recorded = _read_json(fail_path)
                if not isinstance(recorded, dict):
                    raise _Damaged("expected a JSON mapping of image id to reason")
            except _Damaged as exc:
                _warn_damaged(fail_path, str(exc), "set aside; those images are tried again")
                _set_aside(fail_path)
                continue
            for image_id, reason in recorded.items():
                self._failures.setdefault(str(image_id), str(reason))

    # -- damage -----------------------------------------------------------------------------

    @staticmethod
    def _companions(npy_path: Path) -> tuple[Path, Path]:
        """A shard's ids file and checksum file."""
        stem = npy_path.name[: -len(".npy")]
        return npy_path.with_name(stem + _IDS_SUFFIX), npy_path.with_name(stem + _SUM_SUFFIX)

    def _discard(self, npy_path: Path, problem: str, ids_path: Path | None = None) -> None:
        ids_file, sum_file = self._companions(npy_path)
        _warn_damaged(
            ids_path or npy_path,
            problem,
            "set aside as *.damaged; its images are extracted again",
        )
        self._damaged.add(npy_path)
        _set_aside(npy_path, sum_file, ids_file)

    def _check_shard(self, shard: int, dim: int | None) -> np.ndarray:
        """The shard's memory-mapped array once its files match their checksums and its shape
        is float32 [rows, dim]; raises ``_Damaged`` saying what is wrong."""
        npy_path = self._shard_paths[shard]
        ids_path, sum_path = self._companions(npy_path)
        if sum_path.is_file():
            sums = _read_json(sum_path)
            if not isinstance(sums, dict):
                raise _Damaged(f"its checksum file {sum_path.name} holds no checksums")
            if file_sha256(npy_path) != sums.get("npy"):
                raise _Damaged("its features do not match their checksum: overwritten or cut")
            if file_sha256(ids_path) != sums.get("ids"):
                raise _Damaged("its ids file does not match its checksum")
        try:
            array = np.load(npy_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _Damaged(f"not a readable array: {exc}") from None
        rows = self._shard_rows[shard]
        if (
            array.dtype != DTYPE
            or array.ndim != 2
            or array.shape[0] != rows
            or (dim is not None and array.shape[1] != dim)
        ):
            raise _Damaged(
                f"holds a {array.dtype} array of shape {array.shape}, expected "
                f"{DTYPE.name} [{rows}, {dim if dim is not None else 'dim'}]"
            )
        return array

    def _checked(self, shards: Iterable[int]) -> bool:
        """Check the given shards (each once); True when all are sound. Damaged ones are set
        aside and the index re-read, so their ids become missing (or served by a copy)."""
        sound = True
        for shard in sorted(set(shards)):
            if self._shard_arrays[shard] is not None:
                continue
            try:
                self._shard_arrays[shard] = self._check_shard(shard, self.dim)
            except _Damaged as exc:
                self._discard(self._shard_paths[shard], str(exc))
                sound = False
            except FileNotFoundError:  # removed by another process (compact): re-read
                sound = False
        if not sound:
            self.refresh()
        return sound

    def _check_ids(self, ids: Iterable[str]) -> None:
        """Check every shard that serves one of ``ids`` (again after each re-read)."""
        ids = list(ids)
        while not self._checked(self._index[i][0] for i in ids if i in self._index):
            pass

    def _dim_from_shards(self) -> int | None:
        for shard in range(len(self._shard_paths)):
            try:
                return int(self._check_shard(shard, None).shape[1])
            except (_Damaged, FileNotFoundError):
                continue
        return None

    def _array(self, shard: int) -> np.ndarray:
        array = self._shard_arrays[shard]
        if array is None:
            if not self._checked([shard]):
                raise KeyError(
                    f"shard {self._shard_paths[shard]} was damaged and set aside; "
                    "rerun the extraction to rebuild it"
                )
            array = self._shard_arrays[shard]
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
        decode failure. Unique, in first-seen order. The shards holding the others are
        checked first: ids of a damaged shard are missing again."""
        ids = list(ids)
        self._check_ids(ids)
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

        Repeated ids give repeated rows. Any id without features raises KeyError (also
        the ids of a shard found damaged now: it is set aside, with a warning).
        """
        ids = list(ids)
        self._check_ids(ids)
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

    def write(self, ids: Sequence[str], features: np.ndarray, *, remember: bool = True) -> int:
        """Store features for ids as one new shard; returns how many rows were added.

        Ids already stored, and repeats inside ``ids`` after the first, are dropped, so
        each id is stored once however often it is written.

        remember=False: the shard is written but this object does not index it, so a writer
        streaming millions of images holds nothing per image (a worker scan's driver, whose
        workers already skip the ids stored before the run). An id written twice that way
        may then be stored twice: readers take the first copy, ``compact`` keeps one.
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
        ids_bytes = json.dumps(new_ids).encode()
        # Features, their checksums, then the ids: the ids file is what makes the shard count.
        npy_digest = _atomic_write_bytes(npy_path, _npy_bytes(rows))
        self._write_shard_index(npy_path, npy_digest, ids_bytes)
        if not remember:
            return len(new_ids)
        shard = len(self._shard_paths)
        self._shard_paths.append(npy_path)
        self._shard_arrays.append(None)
        self._shard_rows.append(len(new_ids))
        for row, image_id in enumerate(new_ids):
            self._index[image_id] = (shard, row)
        return len(new_ids)

    def _write_shard_index(self, npy_path: Path, npy_digest: str, ids_bytes: bytes) -> None:
        """The checksum file, then the ids file, of a shard whose features are in place."""
        self._damaged.discard(npy_path)  # a rebuilt shard may take a damaged one's name
        ids_path, sum_path = self._companions(npy_path)
        sums = {"npy": npy_digest, "ids": hashlib.sha256(ids_bytes).hexdigest()}
        _atomic_write_bytes(sum_path, json.dumps(sums).encode())
        _atomic_write_bytes(ids_path, ids_bytes)

    def compact(self) -> int:
        """Merge every shard into one (streamed through a memory map); returns shards removed.

        Many small shards (one per extraction batch) make opening slow on big collections;
        one shard is one memory-mapped array. Crash-safe like ``write``: the merged shard is
        complete before the old ones are deleted, and left-over old shards only hold copies.
        Run it when no other process is reading or writing this store.
        """
        self._check_ids(list(self._index))  # a damaged shard is set aside, never merged
        old_paths = list(self._shard_paths)
        if len(old_paths) <= 1:
            return 0
        ids = list(self._index)
        name = _SHARD_PREFIX + _content_hash(ids)
        npy_path = self.path / f"{name}.npy"
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
        self._write_shard_index(npy_path, file_sha256(npy_path), json.dumps(ids).encode())
        self._shard_arrays = []  # drop memory maps before deleting their files
        for old in old_paths:
            if old != npy_path:
                for companion in self._companions(old):
                    companion.unlink(missing_ok=True)
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
