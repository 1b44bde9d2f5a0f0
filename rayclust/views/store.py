"""FeatureStore: the cache of one view's features, keyed by image content id.

``root`` is a local folder (shared storage for a cluster) or an ``s3://`` / ``gs://``
prefix; the file access of both lives in ``rayclust.views._store_files``.

Layout of ``<root>/<spec_key>/``::

    meta.json                  view spec, feature dim, dtype
    shard-<hash>.npy           float32 [m, dim] features
    shard-<hash>.sha256        {"npy": sha256 of the .npy bytes, "ids": sha256 of the ids file}
    shard-<hash>.ids.json      the m image ids of that shard, row by row
    failures-<hash>.json       {image_id: reason} for images that could not be decoded

Crash safety: every file is written to a temporary name and moved into place with
``os.replace`` (in a bucket: one PUT per object, atomic by itself), and a shard counts only
once its ``.ids.json`` exists, which is written after its ``.npy``. A process killed at any
point leaves either a whole shard or one that is ignored (an orphan ``.npy`` without ids,
or a ``.*.tmp`` file).

Idempotence: a shard's name is a hash of its ids, so re-writing the same batch (a retried
task) produces the same file names and replaces them instead of adding a second copy.

Damage: a shard is checked before its rows are used (``missing`` checks the shards holding
the ids asked for, ``get`` the shards it reads): its name must be the hash of its ids (ids
reordered or edited), its files must match the checksums written with it (features
overwritten, truncated), and the array must be float32 [m, dim]. A shard that fails, or
whose ids file or checksum file cannot be read, is named in a :class:`CacheDamageWarning`,
set aside (its files renamed to ``*.damaged``; in a bucket copied and deleted) and its ids count as missing again, so the
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
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.views._store_files import npy_bytes, open_folder

DTYPE = np.dtype("float32")
_SHARD_PREFIX = "shard-"
_IDS_SUFFIX = ".ids.json"
_SUM_SUFFIX = ".sha256"
_FAILURES_PREFIX = "failures-"


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


def _warn_damaged(path: str, problem: str, consequence: str) -> None:
    warnings.warn(
        f"feature cache file {path} is damaged ({problem}); {consequence}",
        CacheDamageWarning,
        stacklevel=3,
    )


def _read_json(data: bytes) -> Any:
    try:
        return json.loads(data)
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
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        """index=False: a writer that does not read the folder's shards (a worker of a
        worker scan writes ``write(..., remember=False)`` shards and reads nothing; opening
        the index would cost every worker ~200 B per stored image).

        root may be an ``s3://`` / ``gs://`` prefix (a str): the store is then the objects
        under ``root/spec_key``, read and written through fsspec with ``storage_options``
        (``rayclust.remote``); ``path`` and ``root`` stay URIs (str) there."""
        if not spec_key or "/" in spec_key or spec_key in (".", ".."):
            raise ValueError(f"spec_key={spec_key!r} should be a plain, non-empty name")
        self._files = open_folder(root, spec_key, storage_options)
        self.root: Path | str = root.rstrip("/") if self._files.remote else Path(root)
        self.spec_key = spec_key
        self.path: Path | str = self._files.path
        self._spec = asdict(spec) if is_dataclass(spec) else spec
        self._damaged: set[str] = set()  # shards found damaged, skipped even if not renamed
        self.dim: int | None = None
        meta = self._read_meta()
        if meta is not None:
            self.dim = int(meta["dim"])
            if dim is not None and dim != self.dim:
                raise ValueError(
                    f"dim={dim} does not match the stored feature dim={self.dim} in "
                    f"{self._files.where('meta.json')}; a different view should have a "
                    "different spec_key"
                )
        elif dim is not None:
            self._write_meta(dim)
        if not index:
            self._empty_index()
            return
        self.refresh()
        if self.dim is None and self._shard_names:  # meta.json set aside (or lost)
            found = self._dim_from_shards()
            if found is not None:
                self._write_meta(found)

    # -- metadata -------------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        files = self._files
        meta_path = files.where("meta.json")
        if not files.exists("meta.json"):
            return None
        try:
            meta = _read_json(files.read("meta.json"))
            dim = meta.get("dim") if isinstance(meta, dict) else None
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise _Damaged("expected a mapping with an integer dim >= 1")
        except _Damaged as exc:
            _warn_damaged(meta_path, str(exc), "set aside; the dim is taken from the shards")
            files.set_aside("meta.json")
            return None
        if meta.get("dtype", DTYPE.name) != DTYPE.name:
            raise ValueError(f"{meta_path} has dtype={meta['dtype']}, expected {DTYPE.name}")
        return meta

    def _write_meta(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim={dim} should be >= 1")
        meta = {"spec_key": self.spec_key, "spec": self._spec, "dim": int(dim), "dtype": DTYPE.name}
        self._files.write("meta.json", json.dumps(meta, indent=2).encode())
        self.dim = int(dim)

    # -- index ----------------------------------------------------------------------------

    def _empty_index(self) -> None:
        self._shard_names: list[str] = []  # of the .npy files
        self._shard_arrays: list[np.ndarray | None] = []  # set once the shard is checked
        self._shard_rows: list[int] = []
        self._index: dict[str, tuple[int, int]] = {}

    def refresh(self) -> None:
        """Re-read the folder: picks up shards and failures written by other processes.

        Shards whose ids file is unreadable or does not hash to the shard's name are set
        aside here (named in a :class:`CacheDamageWarning`); their features are checked
        when first needed (:meth:`missing`, :meth:`get`).
        """
        files = self._files
        listed = files.list(f"{_SHARD_PREFIX}*")  # one listing: a bucket's is a request
        npy_names = {entry.name for entry in listed if entry.name.endswith(".npy")}
        entries = []
        for entry in listed:
            if not entry.name.endswith(_IDS_SUFFIX):
                continue
            npy_name = entry.name[: -len(_IDS_SUFFIX)] + ".npy"
            if npy_name in npy_names and npy_name not in self._damaged:
                entries.append((entry.mtime, entry.name, npy_name))
        entries.sort()
        self._empty_index()
        for _, ids_name, npy_name in entries:
            try:
                shard_ids = _read_json(files.read(ids_name))
                if not isinstance(shard_ids, list) or not all(
                    isinstance(image_id, str) for image_id in shard_ids
                ):
                    raise _Damaged("expected a JSON list of image ids")
                if ids_name != _SHARD_PREFIX + _content_hash(shard_ids) + _IDS_SUFFIX:
                    raise _Damaged("its ids do not hash to the shard's name: reordered or edited")
            except FileNotFoundError:  # removed since the listing (compact elsewhere)
                continue
            except _Damaged as exc:
                self._discard(npy_name, str(exc), ids_name)
                continue
            shard = len(self._shard_names)
            self._shard_names.append(npy_name)
            self._shard_arrays.append(None)
            self._shard_rows.append(len(shard_ids))
            for row, image_id in enumerate(shard_ids):
                self._index.setdefault(image_id, (shard, row))  # first copy wins
        self._failures: dict[str, str] = {}
        for fail_name in sorted(e.name for e in files.list(f"{_FAILURES_PREFIX}*.json")):
            try:
                recorded = _read_json(files.read(fail_name))
                if not isinstance(recorded, dict):
                    raise _Damaged("expected a JSON mapping of image id to reason")
            except FileNotFoundError:
                continue
            except _Damaged as exc:
                _warn_damaged(
                    files.where(fail_name), str(exc), "set aside; those images are tried again"
                )
                files.set_aside(fail_name)
                continue
            for image_id, reason in recorded.items():
                self._failures.setdefault(str(image_id), str(reason))

    # -- damage -----------------------------------------------------------------------------

    @staticmethod
    def _companions(npy_name: str) -> tuple[str, str]:
        """A shard's ids file and checksum file."""
        stem = npy_name[: -len(".npy")]
        return stem + _IDS_SUFFIX, stem + _SUM_SUFFIX

    def _discard(self, npy_name: str, problem: str, ids_name: str | None = None) -> None:
        """Warn and set the shard's files aside; the ids go last, as on writing, so a shard
        never counts without features."""
        ids_file, sum_file = self._companions(npy_name)
        _warn_damaged(
            self._files.where(ids_name or npy_name),
            problem,
            "set aside as *.damaged; its images are extracted again",
        )
        self._damaged.add(npy_name)
        for name in (npy_name, sum_file, ids_file):
            self._files.set_aside(name)

    def _check_shard(self, shard: int, dim: int | None) -> np.ndarray:
        """The shard's memory-mapped array once its files match their checksums and its shape
        is float32 [rows, dim]; raises ``_Damaged`` saying what is wrong."""
        files = self._files
        npy_name = self._shard_names[shard]
        ids_name, sum_name = self._companions(npy_name)
        if files.exists(sum_name):
            sums = _read_json(files.read(sum_name))
            if not isinstance(sums, dict):
                raise _Damaged(f"its checksum file {sum_name} holds no checksums")
            if files.sha256(npy_name) != sums.get("npy"):
                raise _Damaged("its features do not match their checksum: overwritten or cut")
            if files.sha256(ids_name) != sums.get("ids"):
                raise _Damaged("its ids file does not match its checksum")
        try:
            array = files.load_array(npy_name)
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
                self._discard(self._shard_names[shard], str(exc))
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
        for shard in range(len(self._shard_names)):
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
                    f"shard {self._files.where(self._shard_names[shard])} was damaged and set "
                    "aside; "
                    "rerun the extraction to rebuild it"
                )
            array = self._shard_arrays[shard]
        return array

    @property
    def n_shards(self) -> int:
        return len(self._shard_names)

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
        npy_name = f"{name}.npy"
        ids_bytes = json.dumps(new_ids).encode()
        # Features, their checksums, then the ids: the ids file is what makes the shard count.
        npy_digest = self._files.write(npy_name, npy_bytes(rows))
        self._write_shard_index(npy_name, npy_digest, ids_bytes)
        if not remember:
            return len(new_ids)
        shard = len(self._shard_names)
        self._shard_names.append(npy_name)
        self._shard_arrays.append(None)
        self._shard_rows.append(len(new_ids))
        for row, image_id in enumerate(new_ids):
            self._index[image_id] = (shard, row)
        return len(new_ids)

    def _write_shard_index(self, npy_name: str, npy_digest: str, ids_bytes: bytes) -> None:
        """The checksum file, then the ids file, of a shard whose features are in place."""
        self._damaged.discard(npy_name)  # a rebuilt shard may take a damaged one's name
        ids_name, sum_name = self._companions(npy_name)
        sums = {"npy": npy_digest, "ids": hashlib.sha256(ids_bytes).hexdigest()}
        self._files.write(sum_name, json.dumps(sums).encode())
        self._files.write(ids_name, ids_bytes)

    def compact(self) -> int:
        """Merge every shard into one (streamed through a memory map; in a bucket, built in
        memory and uploaded); returns shards removed.

        Many small shards (one per extraction batch) make opening slow on big collections;
        one shard is one memory-mapped array. Crash-safe like ``write``: the merged shard is
        complete before the old ones are deleted, and left-over old shards only hold copies.
        Run it when no other process is reading or writing this store.
        """
        self._check_ids(list(self._index))  # a damaged shard is set aside, never merged
        old_names = list(self._shard_names)
        if len(old_names) <= 1:
            return 0
        ids = list(self._index)
        npy_name = _SHARD_PREFIX + _content_hash(ids) + ".npy"

        def fill(merged: np.ndarray) -> None:
            chunk = 65_536
            for start in range(0, len(ids), chunk):
                merged[start : start + chunk] = self.get(ids[start : start + chunk])

        digest = self._files.write_array(npy_name, (len(ids), self.dim), DTYPE, fill)
        self._write_shard_index(npy_name, digest, json.dumps(ids).encode())
        self._shard_arrays = []  # drop memory maps before deleting their files
        for old in old_names:
            if old != npy_name:
                for companion in self._companions(old):
                    self._files.delete(companion)
                self._files.delete(old)
        self.refresh()
        return len(old_names) - 1

    # -- decode failures ------------------------------------------------------------------

    def record_failures(self, failures: Mapping[str, str]) -> None:
        """Remember images that could not be decoded, so later runs do not retry them."""
        new = {k: str(v) for k, v in failures.items() if k not in self._failures}
        if not new:
            return
        name = _FAILURES_PREFIX + _content_hash(sorted(new)) + ".json"
        self._files.write(name, json.dumps(new, indent=0).encode())
        self._failures.update(new)

    def failures(self) -> dict[str, str]:
        """{image_id: reason} of every recorded decode failure."""
        return dict(self._failures)

    def __repr__(self) -> str:
        return (
            f"FeatureStore(path={str(self.path)!r}, n_ids={len(self)}, dim={self.dim}, "
            f"n_shards={self.n_shards}, n_failures={len(self._failures)})"
        )
