"""Writers for every kind of bad or odd image file, for tests (one function per kind).

write_bad_images(dir) -> {kind: path}: files a run must skip (scan or decode stage).
write_odd_images(dir) -> {kind: path}: unusual but valid files a run must decode correctly.
The pixel content is known (see the constants), so tests can check decoded values.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
BOMB_SIDE = 20_000


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    # Noise does not compress, so cutting the file really removes pixel data.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """An upright test card: red, green / blue, white quadrants (any rotation changes it)."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[: height // 2, : width // 2] = RED
    array[: height // 2, width // 2 :] = GREEN
    array[height // 2 :, : width // 2] = BLUE
    array[height // 2 :, width // 2 :] = WHITE
    return Image.fromarray(array)


# --------------------------------------------------------------------------- bad files


def write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_text_as_image(path: Path) -> Path:
    path.write_text("this is a text file wearing an image extension\n" * 20)
    return path


def write_truncated(path: Path, fmt: str, keep: float = 0.5) -> Path:
    """A valid image of the given format with its end cut off (header intact)."""
    data = _encoded(_noise_rgb(96, 96, seed=1), fmt)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def write_png_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid side x side 1-bit black PNG: ~50 KB on disk, side**2 pixels when decoded.

    Written row by row with a streaming compressor so building it needs little memory.
    """
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_piece = 500
    pieces = [compressor.compress(row * rows_per_piece) for _ in range(side // rows_per_piece)]
    pieces.append(compressor.compress(row * (side % rows_per_piece)))
    pieces.append(compressor.flush())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(pieces))
        + _png_chunk(b"IEND", b"")
    )
    return path


def write_bad_images(folder: Path) -> dict[str, Path]:
    """One file of each kind that must be skipped; all have image extensions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "empty": write_empty(folder / "empty.jpg"),
        "random_bytes": write_random_bytes(folder / "random_bytes.png"),
        "text_as_jpg": write_text_as_image(folder / "text_as.jpg"),
        "truncated_png": write_truncated(folder / "truncated.png", "PNG"),
        "truncated_jpeg": write_truncated(folder / "truncated.jpg", "JPEG"),
        "bomb_png": write_png_bomb(folder / "bomb.png"),
    }


# --------------------------------------------------------------------------- odd but valid


def write_png_named_jpg(path: Path) -> Path:
    path.write_bytes(_encoded(quadrants(), "PNG"))
    return path


def write_cmyk_jpeg(path: Path) -> Path:
    """Left half pure cyan, right half pure yellow (CMYK)."""
    img = Image.new("CMYK", (32, 16), (255, 0, 0, 0))
    img.paste((0, 0, 255, 0), (16, 0, 32, 16))
    img.save(path, format="JPEG", quality=95)
    return path


def sixteen_bit_ramp() -> np.ndarray:
    """16 rows of the same 256 uint16 values, evenly spaced from 0 to 65535."""
    return np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (16, 1))


def write_png16(path: Path) -> Path:
    Image.fromarray(sixteen_bit_ramp()).save(path, format="PNG")
    return path


def write_palette_transparent(path: Path) -> Path:
    """Palette PNG: left half index 0 (red, but transparent), right half index 1 (blue)."""
    img = Image.new("P", (16, 8), 0)
    img.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    img.paste(1, (8, 0, 16, 8))
    img.save(path, format="PNG", transparency=0)
    return path


def write_rgba(path: Path) -> Path:
    """Three vertical bands: black alpha 0, black alpha 128, blue alpha 255."""
    array = np.zeros((8, 24, 4), dtype=np.uint8)
    array[:, 8:16, 3] = 128
    array[:, 16:, :] = (0, 0, 255, 255)
    Image.fromarray(array).save(path, format="PNG")
    return path


def write_exif_rotated_jpeg(path: Path) -> Path:
    """quadrants() stored rotated 90 degrees left with EXIF orientation 6 (rotate right)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    quadrants().transpose(Image.Transpose.ROTATE_90).save(
        path, format="JPEG", quality=95, exif=exif
    )
    return path


def write_upright_twin_jpeg(path: Path) -> Path:
    quadrants().save(path, format="JPEG", quality=95)
    return path


def write_animated_gif(path: Path) -> Path:
    """Frames red, green, blue: the first frame (red) is the one to use."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return path


def write_greyscale(path: Path) -> Path:
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (8, 1))).save(path, "PNG")
    return path


def write_odd_images(folder: Path) -> dict[str, Path]:
    """One file of each unusual-but-valid kind; each must decode to a correct RGB image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "png_named_jpg": write_png_named_jpg(folder / "png_named.jpg"),
        "cmyk_jpeg": write_cmyk_jpeg(folder / "cmyk.jpg"),
        "png16": write_png16(folder / "sixteen_bit.png"),
        "palette_transparent": write_palette_transparent(folder / "palette_transparent.png"),
        "rgba": write_rgba(folder / "rgba.png"),
        "exif_rotated": write_exif_rotated_jpeg(folder / "exif_rotated.jpg"),
        "exif_upright_twin": write_upright_twin_jpeg(folder / "exif_upright_twin.jpg"),
        "animated_gif": write_animated_gif(folder / "animated.gif"),
        "greyscale": write_greyscale(folder / "greyscale.png"),
    }
