"""What a scan produces: usable images, skipped files and their reasons, content ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


class CollectionError(ValueError):
    """A collection that cannot be used as given (no usable image, a list file without a
    path column, ...): the user's to fix; the message says what and where."""


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


def describe_read_error(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "cannot read file: permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    return f"cannot read file: {exc.strerror or exc}"
