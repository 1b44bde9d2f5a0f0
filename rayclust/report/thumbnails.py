"""Thumbnails for the report: small JPEGs inlined as base64 data URIs, each under a byte cap.

The page bound rests on that cap: whatever the images look like, a thumbnail costs at most
``MAX_THUMB_BYTES`` JPEG bytes (4,000 base64 characters).
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from rayclust.report.quality import QUALITY_PX, Quality, measure

log = logging.getLogger("rayclust")

THUMB_PX = 96
THUMB_QUALITY = 70
MAX_THUMB_BYTES = 3000  # JPEG bytes; base64 makes it 4,000 characters in the page


def jpeg_within(img: Any, quality: int, max_bytes: int = MAX_THUMB_BYTES) -> bytes:
    """JPEG bytes of img, lowering the quality (then the size) until at most max_bytes."""
    while True:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
        if len(data) <= max_bytes or (quality <= 20 and min(img.size) <= 16):
            return data
        if quality > 20:
            quality -= 15
        else:
            img = img.resize((max(img.width * 3 // 4, 1), max(img.height * 3 // 4, 1)))


class ThumbnailCache:
    """Base64 JPEG data URIs and quality figures (``rayclust.report.quality``), made from one
    decode per image id (repeated images cost one decode)."""

    def __init__(
        self,
        size: int = THUMB_PX,
        quality: int = THUMB_QUALITY,
        storage_options: dict | None = None,  # for s3:// / gs:// paths (rayclust.remote)
    ) -> None:
        self.size = size
        self.quality = quality
        self.storage_options = storage_options
        self._uris: dict[str, str | None] = {}
        self.measured: dict[str, Quality | None] = {}
        self.failures: list[tuple[str, str]] = []  # (path, reason) of images not shown

    def uri(self, path: str, image_id: str) -> str | None:
        """The thumbnail of the image at `path`, None when it cannot be decoded."""
        if image_id not in self._uris:
            self._make(path, image_id)
        return self._uris[image_id]

    def figures(self, path: str, image_id: str) -> Quality | None:
        """Size, blur and brightness of the image at `path`, None when it cannot be decoded."""
        if image_id not in self.measured:
            self._make(path, image_id)
        return self.measured[image_id]

    def _make(self, path: str, image_id: str) -> None:
        from rayclust.images import ImageDecodeError, decode_image

        try:
            img = decode_image(path, target_size=QUALITY_PX, storage_options=self.storage_options)
        except (ImageDecodeError, OSError) as exc:
            # One warning for all of them (write_report): a dataset run may have many.
            log.debug("report: no thumbnail for %s (%s)", path, exc)
            self.failures.append((path, str(exc)))
            self._uris[image_id] = self.measured[image_id] = None
            return
        self.measured[image_id] = measure(img, _file_size(path, img))
        img.thumbnail((self.size, self.size))
        self._uris[image_id] = data_uri(jpeg_within(img, self.quality), "image/jpeg")


def _file_size(path: str, decoded: Any) -> tuple[int, int]:
    """(width, height) of the file from its header; the decoded size for remote files."""
    from PIL import Image, UnidentifiedImageError

    if "://" not in path:
        try:
            with Image.open(path) as img:
                return img.size
        except (OSError, UnidentifiedImageError):
            pass
    return decoded.size


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
