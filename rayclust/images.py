"""Image collections: discovery, content hashing and robust decoding.

Interface (owned by images work; other modules rely on these names):
- ImageRecord(path, image_id, label): one usable image; image_id is a content hash.
- SkippedImage(path, reason, stage): a file that was not used, and why.
- ImageSet(records, skipped): from_folder / from_list / from_source.
- decode_image(path, max_pixels) -> RGB PIL image, or raises ImageDecodeError(reason).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb threshold


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


@dataclass
class ImageSet:
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)


def content_id(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(f"too many pixels: {img.width}x{img.height} > {max_pixels}")
            return img.convert("RGB")
    except ImageDecodeError:
        raise
    except Exception as exc:  # placeholder; the real module classifies failures
        raise ImageDecodeError(f"cannot decode: {exc}") from exc
