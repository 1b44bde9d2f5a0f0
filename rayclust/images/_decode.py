"""Robust decoding: a header probe that never decodes pixels, and a full decode to RGB.

Only real raster formats are opened (the content decides, not the extension); sizes beyond
``max_pixels`` are refused from the header; a truncated or corrupt file raises
:class:`ImageDecodeError` with a short reason, never a padded image.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from rayclust import remote

from ._records import ImageDecodeError, content_id, describe_read_error

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb threshold
MAX_ASPECT_RATIO = 100  # longer side / shorter side; beyond it an image is refused
CHANGED_SINCE_SCAN = "changed since scan"  # the reason given by read_checked
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # formats whose decoder can scale (DCT scaling)

# Real raster formats only: Pillow can also parse EPS (runs Ghostscript), PSD, ICNS, XBM,
# SPIDER and more, none of which belong in a photo collection. JPEG comes first because its
# opener also recognises MPO (multi-picture JPEG from phones and cameras).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP")
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


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
def quiet_pillow() -> Iterator[None]:
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
    # A view resizes the shortest side up or down to a few hundred pixels, so the resized
    # image grows with the aspect ratio, not with the pixel count: a 20000x1 PNG (60 KB)
    # would become 256 x 5.1M pixels (~5 GB as floats). Refused here, from the header.
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(
            f"extreme aspect ratio: {width}x{height} pixels (more than {MAX_ASPECT_RATIO}:1)"
        )


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; raises ImageDecodeError with the reason.

    Reads no pixel data, so a 20000x20000 image that is small on disk is refused in
    microseconds and without allocating its pixels.
    """
    with quiet_pillow():
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


def read_checked(
    path: str | Path,
    image_id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of one file or object, read once; ImageDecodeError with the reason if
    unreadable, empty, or (``image_id`` given) no longer the content the scan hashed.

    Decode what this returns: the features then belong to ``image_id`` for sure, even if
    the file is edited at any moment (an edited file is reported as changed since the scan,
    and the next scan gives it its new content id).
    """
    try:
        if remote.is_remote(path):
            data = remote.read_bytes(str(path), storage_options)
        else:
            data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(describe_read_error(exc)) from exc
    except Exception as exc:  # the store's own error types
        if not remote.is_remote(path):
            raise
        raise ImageDecodeError(remote.describe_error(exc)) from exc
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if image_id is not None:
        found = content_id(data)
        if found != image_id:
            raise ImageDecodeError(
                f"{CHANGED_SINCE_SCAN}: its content id is now {found}, the scan's was {image_id}"
            )
    return data


def _open_source(
    source: str | Path | bytes, storage_options: Mapping[str, Any] | None
) -> tuple[contextlib.AbstractContextManager[IO[bytes]], str]:
    """An open binary file (or buffer) for ``source`` and its file name ("" for bytes)."""
    if remote.is_remote(source):
        try:
            source = remote.read_bytes(source, storage_options)
        except Exception as exc:  # OSError subclasses, or the store's own error types
            raise ImageDecodeError(remote.describe_error(exc)) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        return io.BytesIO(bytes(source)), ""
    filename = os.fspath(source)
    try:
        if os.path.getsize(filename) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        return open(filename, "rb"), filename  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise ImageDecodeError(describe_read_error(exc)) from exc


def _draft_scale(img: Image.Image, target_size: int | None) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) that keeps both sides >= target_size, as Pillow's
    ``draft`` chooses it; 1 for formats that cannot decode at reduced scale."""
    if target_size is None or img.format not in _DRAFT_FORMATS:
        return 1
    room = min(img.width // target_size, img.height // target_size)
    return next(scale for scale in (8, 4, 2, 1) if room >= scale or scale == 1)


def _load_rgb(img: ImageFile.ImageFile) -> Image.Image:
    try:
        img.load()
        # Orientation may live in an EXIF chunk after the pixel data, so read it before
        # the file closes.
        return to_rgb(ImageOps.exif_transpose(img))
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow signals bad data with many exception types
        raise ImageDecodeError(_describe_load_error(exc)) from exc


def decode_variants(
    source: str | Path | bytes,
    target_sizes: Sequence[int | None],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[int | None, Image.Image]:
    """One image decoded for several consumers: ``{target size: RGB image}``.

    Each target size gets exactly what ``decode_image(source, target_size=size)`` returns,
    whatever other sizes are asked for in the same call, but the file is read once and
    decoded once per distinct JPEG scale (once in all for other formats and for big JPEGs,
    where every size of a few hundred pixels lands on the same 1/8 scale). None: full size.
    """
    sizes = list(dict.fromkeys(target_sizes))
    for size in sizes:
        if size is not None and size < 1:
            raise ValueError(f"target_size={size} should be >= 1 or None")
    opened, filename = _open_source(source, storage_options)
    by_scale: dict[int, Image.Image] = {}
    with opened as fp, quiet_pillow():
        img = _open_restricted(fp, filename)
        _check_size(img.size, max_pixels)
        scales = {size: _draft_scale(img, size) for size in sizes}
        for scale in sorted(set(scales.values())):
            if by_scale:  # a second scale of a JPEG: a fresh decoder over the same bytes
                fp.seek(0)
                img = _open_restricted(fp, filename)
            if scale > 1:
                img.draft(None, (img.width // scale, img.height // scale))
            by_scale[scale] = _load_rgb(img)
    out: dict[int | None, Image.Image] = {}
    reduced: dict[tuple[int, int], Image.Image] = {}
    for size in sizes:
        rgb = by_scale[scales[size]]
        factor = 1 if size is None else min(rgb.size) // size
        if factor >= 2:
            key = (scales[size], factor)
            if key not in reduced:
                reduced[key] = rgb.reduce(factor)
            rgb = reduced[key]
        out[size] = rgb
    return out


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
    Sizes beyond ``max_pixels`` and aspect ratios beyond MAX_ASPECT_RATIO are refused from
    the header.

    target_size: the shortest side the caller needs (e.g. the model's resize size). Big images
    are then decoded at reduced scale (JPEG DCT scaling, otherwise box reduction) with the
    shortest side still >= target_size, so a 40 MP photo costs a fraction of a full decode.
    """
    return decode_variants(source, [target_size], max_pixels, storage_options)[target_size]
