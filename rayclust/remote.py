"""Remote image collections: ``s3://`` and ``gs://`` URIs read through fsspec.

One small interface, used by discovery (``rayclust.images``) and by the extraction workers:

- ``is_remote(path)``: a URI with a supported scheme (``s3://``, ``gs://``, ``gcs://``).
- ``read_bytes(uri, storage_options)``: the whole object, as a local file's bytes would be.
- ``iter_objects(uri, storage_options)``: every object under a prefix, lazily: S3 is read
  page by page (1000 keys a request) and each page is handed on before the next is asked
  for, so discovery starts hashing while a ten-million-key listing is still arriving and
  no listing is held in memory (other stores: folder by folder, through ``fs.walk``).

Backends: ``s3fs`` for S3 and S3-compatible stores (MinIO, Ceph, R2, moto), ``gcsfs`` for
Google Cloud Storage; install them with ``pip install 'rayclust[cloud]'``.

Where the settings come from, later ones win:

1. the backend's own environment and files: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
   / ``AWS_PROFILE`` / an instance role, ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for
   an S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS; fsspec's
   ``FSSPEC_S3_ENDPOINT_URL``-style variables too;
2. ``storage_options``: keyword arguments of ``s3fs.S3FileSystem`` / ``gcsfs.GCSFileSystem``,
   e.g. ``{"endpoint_url": "http://minio:9000"}`` (config key ``input.storage_options``).

On a Ray cluster the extraction workers read the objects themselves, on their own nodes:
the environment of step 1 must exist on every node (an instance role does), while
``storage_options`` travel with the work.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# scheme -> (fsspec protocol, package that implements it)
_BACKENDS = {"s3": ("s3", "s3fs"), "gs": ("gs", "gcsfs"), "gcs": ("gs", "gcsfs")}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
PAGE_SIZE = 1000  # S3's own maximum per ListObjectsV2 request


@dataclass(frozen=True)
class RemoteObject:
    uri: str  # full URI, e.g. s3://bucket/cats/01.jpg
    size: int


def scheme_of(path: object) -> str | None:
    """The URI scheme of ``path`` in lower case (``"s3"``), or None for a local path."""
    if not isinstance(path, str):
        return None
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_remote(path: object) -> bool:
    """True for ``s3://``, ``gs://`` and ``gcs://`` URIs."""
    return scheme_of(path) in _BACKENDS


def check_uri(uri: str, what: str = "source") -> str:
    """Return ``uri`` if its scheme is supported and it names a bucket; raise ValueError
    (``what``: how the message names the URI)."""
    scheme = scheme_of(uri)
    if scheme not in _BACKENDS:
        supported = ", ".join(f"{name}://" for name in _BACKENDS)
        raise ValueError(f"{what} {uri!r}: scheme {scheme}:// is not supported; use {supported}")
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{what} {uri!r} names no bucket; expected {scheme}://BUCKET/PREFIX")
    return uri


def has_userinfo(uri: str) -> bool:
    """Whether ``uri`` carries ``user[:password]@`` before its bucket (fsspec would take it
    as credentials)."""
    return "@" in uri.split("://", 1)[-1].split("/", 1)[0]


def check_bucket(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise FileNotFoundError naming the bucket of ``uri`` when it does not exist (or the
    backend's error when it cannot be reached): one request, before work that writes there."""
    fs = filesystem(uri, storage_options)
    bucket = check_uri(uri).split("://", 1)[1].split("/", 1)[0]
    try:
        fs.info(bucket)  # not exists(): it answers False for an unreachable endpoint too
    except FileNotFoundError:
        raise FileNotFoundError(f"bucket {bucket!r} not found") from None


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None):
    """The fsspec filesystem for ``uri`` (instances are cached by fsspec per options)."""
    import fsspec

    protocol, package = _BACKENDS[scheme_of(check_uri(uri))]
    try:
        return fsspec.filesystem(protocol, **dict(storage_options or {}))
    except ImportError as exc:
        raise ImportError(
            f"reading {uri!r} needs the {package} package: pip install 'rayclust[cloud]'"
            f" (or pip install {package})"
        ) from exc


def _scheme_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://"


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The object's bytes; OSError subclasses (FileNotFoundError, PermissionError) on failure."""
    return filesystem(uri, storage_options).cat_file(uri)


def read_text(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    return read_bytes(uri, storage_options).decode("utf-8-sig")  # tolerate a byte-order mark


def is_file(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    return filesystem(uri, storage_options).isfile(uri)


def join(base: str, relative: str) -> str:
    """``join("s3://b/lists", "../cats/1.jpg")`` -> ``"s3://b/cats/1.jpg"``.

    ``.`` and ``..`` are resolved as a file system would (a store takes them literally);
    a path that climbs above the bucket stays at the bucket's top.
    """
    prefix = _scheme_prefix(base)
    bucket, _, key = base[len(prefix) :].partition("/")
    joined = posixpath.normpath(posixpath.join("/", key, relative.lstrip("/")))
    return f"{prefix}{bucket}{joined}"


def parent(uri: str) -> str:
    prefix = _scheme_prefix(uri)
    return prefix + posixpath.dirname(uri[len(prefix) :].rstrip("/"))


def relative_parts(uri: str, root: str) -> tuple[str, ...]:
    """Path components of ``uri`` below ``root`` (both full URIs)."""
    rest = uri[len(root.rstrip("/")) :].strip("/")
    return tuple(part for part in rest.split("/") if part)


def describe_error(exc: BaseException) -> str:
    """A short reason for skipped.csv, as the scan gives for unreadable local files."""
    if isinstance(exc, FileNotFoundError):
        return "object not found"
    if isinstance(exc, PermissionError):
        return "cannot read object: access denied"
    text = str(exc) or type(exc).__name__
    return f"cannot read object: {text[:300]}"


def iter_objects(
    uri: str, storage_options: Mapping[str, Any] | None = None, page_size: int = PAGE_SIZE
) -> Iterator[RemoteObject]:
    """Every object below the prefix ``uri`` (recursively), in the store's listing order.

    Lazy: S3 keys come page by page; other stores folder by folder. Keys ending in "/"
    (the empty "folder" markers some tools create) are left out. A missing bucket or a
    refused listing raises with the URI named.
    """
    fs = filesystem(uri, storage_options)
    prefix = _scheme_prefix(uri)
    root = fs._strip_protocol(uri).rstrip("/")
    try:
        if hasattr(fs, "_iterdir") and getattr(fs, "protocol", None) and "s3" in fs.protocol:
            objects = _iter_s3_pages(fs, root, page_size)
        else:
            objects = _iter_walk(fs, root)
        for path, size in objects:
            if not path.endswith("/"):
                yield RemoteObject(prefix + path, size)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"cannot list {uri!r}: {exc}") from exc
    except PermissionError as exc:
        raise PermissionError(f"cannot list {uri!r}: access denied ({exc})") from exc


def _iter_s3_pages(fs, root: str, page_size: int) -> Iterator[tuple[str, int]]:
    """s3fs's paginated listing (``_iterdir``, no delimiter: the whole subtree), one page
    per round trip to its event loop; ``fs.find`` would build the full listing first."""
    from fsspec.asyn import sync

    bucket, _, key = root.partition("/")
    if not fs.exists(bucket):
        raise FileNotFoundError(f"bucket {bucket!r} not found")
    # "cats" must not match "cats-old/...": list below "cats/" (a bare bucket lists all).
    key_prefix = key + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=key_prefix)

    async def next_page() -> list[dict]:
        page = []
        async for info in pages:
            page.append(info)
            if len(page) >= page_size:
                break
        return page

    while True:
        page = sync(fs.loop, next_page)
        for info in page:
            if info.get("type") == "file":
                yield info["name"], int(info.get("size") or 0)
        if len(page) < page_size:
            return


def _iter_walk(fs, root: str) -> Iterator[tuple[str, int]]:
    if not fs.exists(root):
        raise FileNotFoundError(f"prefix {root!r} not found")
    for folder, _, files in fs.walk(root, detail=True):
        for name in sorted(files):
            info = files[name]
            yield info.get("name") or posixpath.join(folder, name), int(info.get("size") or 0)
