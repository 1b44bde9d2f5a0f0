"""Thumbnails for the report: small JPEGs inlined as base64 data URIs, each under a byte cap.

The page bound rests on that cap: whatever the images look like, a thumbnail costs at most
``MAX_THUMB_BYTES`` JPEG bytes (4,000 base64 characters).
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

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
    """Base64 JPEG data URIs, made once per image id (repeated images cost one decode)."""

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
        self.failures: list[tuple[str, str]] = []  # (path, reason) of images not shown

    def uri(self, path: str, image_id: str) -> str | None:
        """The thumbnail of the image at `path`, None when it cannot be decoded."""
        if image_id not in self._uris:
            self._uris[image_id] = self._make(path)
        return self._uris[image_id]

    def _make(self, path: str) -> str | None:
        from rayclust.images import ImageDecodeError, decode_image

        try:
            img = decode_image(path, target_size=self.size, storage_options=self.storage_options)
        except (ImageDecodeError, OSError) as exc:
            # One warning for all of them (write_report): a dataset run may have many.
            log.debug("report: no thumbnail for %s (%s)", path, exc)
            self.failures.append((path, str(exc)))
            return None
        img.thumbnail((self.size, self.size))
        return data_uri(jpeg_within(img, self.quality), "image/jpeg")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
