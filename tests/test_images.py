"""Discovery, content ids, header probe and robust decoding, on real files of every odd kind."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from rayclust.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageRecord,
    ImageSet,
    SkippedImage,
    content_id,
    decode_image,
    probe_image,
)
from tests.image_factory import (
    BLUE,
    RED,
    WHITE,
    quadrants,
    sixteen_bit_ramp,
    write_bad_images,
    write_odd_images,
    write_png_bomb,
    write_text_as_image,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return write_bad_images(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    return write_odd_images(tmp_path_factory.mktemp("odd"))


def pixels(path: Path, **kwargs) -> np.ndarray:
    img = decode_image(path, **kwargs)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", r"^empty file \(0 bytes\)$"),
        ("random_bytes", r"^not a supported image format \(JPEG, MPO, PNG"),
        ("text_as_jpg", r"^not a supported image format"),
        ("truncated_png", r"^truncated file"),
        ("truncated_jpeg", r"^truncated file"),
        ("bomb_png", r"^decompression bomb: 20000x20000 = 400\.0 MP > limit 89\.5 MP$"),
    ],
)
def test_bad_file_raises_with_reason(bad, kind, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(bad[kind])
    # The same verdict from the bytes as from the path.
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(bad[kind].read_bytes())


def test_missing_file_and_bad_target_size(tmp_path, odd):
    with pytest.raises(ImageDecodeError, match="^file not found$"):
        decode_image(tmp_path / "nowhere.png")
    with pytest.raises(ValueError, match=r"target_size=0 should be >= 1 or None"):
        decode_image(odd["greyscale"], target_size=0)


def test_truncated_files_are_not_patched_globally(bad):
    with pytest.raises(ImageDecodeError):
        decode_image(bad["truncated_jpeg"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_content_decides_not_extension(odd):
    assert odd["png_named_jpg"].suffix == ".jpg"
    np.testing.assert_array_equal(pixels(odd["png_named_jpg"]), np.asarray(quadrants()))


def test_cmyk_jpeg_converted(odd):
    got = pixels(odd["cmyk_jpeg"])
    assert got.shape == (16, 32, 3)
    cyan, yellow = got[8, 4], got[8, 28]
    np.testing.assert_allclose(cyan, (0, 255, 255), atol=6)
    np.testing.assert_allclose(yellow, (255, 255, 0), atol=6)


def test_sixteen_bit_png_scaled_not_clipped(odd):
    assert Image.open(odd["png16"]).mode.startswith("I")
    got = pixels(odd["png16"])
    expected = np.rint(sixteen_bit_ramp() / 257.0).astype(int)
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], expected)
    assert got[0, 128, 0] == 128  # mid-grey stays mid-grey (clipping would give 255)


def test_palette_transparency_becomes_white(odd):
    got = pixels(odd["palette_transparent"])
    assert (got[:, :8] == WHITE).all()  # index 0 is red in the palette but transparent
    assert (got[:, 8:] == BLUE).all()


def test_rgba_composited_on_white(odd):
    got = pixels(odd["rgba"])
    assert (got[:, :8] == WHITE).all()  # fully transparent black
    assert np.isin(got[:, 8:16], (127, 128)).all()  # half-transparent black
    assert (got[:, 16:] == BLUE).all()


def test_exif_orientation_applied(odd):
    stored = Image.open(odd["exif_rotated"])
    assert stored.size == (32, 64)  # on disk it lies on its side
    rotated = pixels(odd["exif_rotated"])
    twin = pixels(odd["exif_upright_twin"])
    assert rotated.shape == twin.shape == (32, 64, 3)
    assert np.abs(rotated - twin).mean() < 2.0
    # Quadrant centres, far from JPEG ringing at the edges: red top-left, white bottom-right.
    np.testing.assert_allclose(rotated[8, 16], RED, atol=8)
    np.testing.assert_allclose(rotated[24, 48], WHITE, atol=8)


def test_animated_gif_gives_first_frame(odd):
    assert Image.open(odd["animated_gif"]).n_frames == 3
    assert (pixels(odd["animated_gif"]) == RED).all()


def test_greyscale_to_rgb(odd):
    got = pixels(odd["greyscale"])
    np.testing.assert_array_equal(got[0, :, 0], np.arange(256))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_target_size_decodes_big_images_smaller(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((1200, 900), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png", compress_level=1)
    for name in ("big.jpg", "big.png"):
        assert decode_image(tmp_path / name).size == (1200, 900)
        small = decode_image(tmp_path / name, target_size=224)
        assert 224 <= min(small.size) < 448, (name, small.size)
        assert small.size[0] * 3 == pytest.approx(small.size[1] * 4, abs=8)  # aspect kept
    # Already small enough: returned as is.
    assert decode_image(tmp_path / "big.png", target_size=900).size == (1200, 900)


def test_bomb_refused_fast_with_little_memory(bad):
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bad["bomb_png"])
    image_set = ImageSet.from_folder(bad["bomb_png"].parent, progress=False)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 2**20  # Python allocations: the file (~50 KB) and small objects
    assert any("decompression bomb" in item.reason for item in image_set.skipped)


def test_bomb_refusal_keeps_peak_rss_small(bad):
    # Pixel buffers are C allocations that tracemalloc cannot see, so measure the peak RSS
    # of a fresh process (a 20000x20000 decode would add >= 400 MB).
    script = f"""
import json, resource
from rayclust.images import ImageDecodeError, ImageSet, decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image({str(bad["bomb_png"])!r})
except ImageDecodeError:
    pass
ImageSet.from_folder({str(bad["bomb_png"].parent)!r}, progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kib": after - before}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    growth_kib = json.loads(result.stdout.strip().splitlines()[-1])["growth_kib"]
    assert growth_kib < 40 * 1024


def test_our_limit_decides_not_pillows(tmp_path):
    # 14000^2 = 196 MP: over twice Pillow's default limit, so Image.open would raise.
    data = write_png_bomb(tmp_path / "large.png", side=14_000).read_bytes()
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "large.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may escape
        assert probe_image(data, max_pixels=200_000_000) == ("PNG", 14_000, 14_000)
        with pytest.raises(ImageDecodeError, match=r"14000x14000 = 196\.0 MP > limit 1\.0 MP"):
            probe_image(data, max_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_probe_rejects_formats_pillow_could_parse(tmp_path):
    # Pillow reads PPM and ICO happily; they are not formats of an image collection here.
    quadrants().save(tmp_path / "card.ppm")
    data = (tmp_path / "card.ppm").read_bytes()
    assert Image.open(tmp_path / "card.ppm").format == "PPM"
    with pytest.raises(ImageDecodeError, match="not a supported image format"):
        probe_image(data)


def test_concurrent_decodes_leave_warning_filters_as_they_were(bad, odd):
    # Extraction decodes in a thread pool; warnings.catch_warnings() in each thread would
    # restore each other's state and could leave Pillow silenced for good.
    before = list(warnings.filters)
    paths = [*odd.values(), bad["truncated_png"], bad["bomb_png"]] * 6

    def decode_or_reason(path):
        try:
            return decode_image(path).size
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(decode_or_reason, paths))
    assert results == [decode_or_reason(path) for path in paths]
    assert warnings.filters == before


# --------------------------------------------------------------------------- discovery


def make_tree(root: Path) -> None:
    """Two categories (one nested), clutter, and files created in reverse of sorted order."""
    for relative, colour in [
        ("dogs/z_dog.png", BLUE),
        ("cats/sub/deeper/b_cat.jpg", RED),
        ("cats/a_cat.png", RED),
        ("loose.png", WHITE),
    ]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(path)
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cats" / ".hidden.png").write_bytes((root / "cats" / "a_cat.png").read_bytes())
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes((root / "cats" / "a_cat.png").read_bytes())
    (root / "dogs" / "Thumbs.db").write_bytes(b"\x00" * 10)
    write_text_as_image(root / "dogs" / "fake.jpg")


def test_from_folder_labels_order_and_skipped(tmp_path):
    make_tree(tmp_path)
    image_set = ImageSet.from_folder(tmp_path, labels_from_folders=True, progress=False)
    relative = [Path(p).relative_to(tmp_path).as_posix() for p in image_set.paths]
    assert relative == [
        "cats/a_cat.png",
        "cats/sub/deeper/b_cat.jpg",
        "dogs/z_dog.png",
        "loose.png",
    ]
    assert image_set.labels == ["cats", "cats", "dogs", None]
    assert image_set.label_names == ["cats", "dogs"]
    assert image_set.label_codes().tolist() == [0, 0, 1, -1]
    assert not image_set.has_labels
    skipped = {Path(s.path).name: (s.reason, s.stage) for s in image_set.skipped}
    assert skipped == {
        "notes.txt": ("not an image file extension: .txt", "scan"),
        "fake.jpg": ("not a supported image format (JPEG, MPO, PNG, GIF, BMP, TIFF, WEBP)", "scan"),
    }  # hidden files, hidden folders and Thumbs.db are ignored silently
    again = ImageSet.from_folder(tmp_path, labels_from_folders=True, progress=False)
    assert again == image_set
    unlabelled = ImageSet.from_folder(tmp_path, progress=False)
    assert unlabelled.labels == [None] * 4
    assert unlabelled.image_ids == image_set.image_ids


def test_content_id_is_blake2b_of_bytes_and_shared_by_copies(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "dogs" / "copy_of_cat.png").write_bytes((tmp_path / "cats/a_cat.png").read_bytes())
    image_set = ImageSet.from_folder(tmp_path, progress=False)
    by_name = {Path(r.path).name: r.image_id for r in image_set}
    data = (tmp_path / "cats/a_cat.png").read_bytes()
    assert by_name["a_cat.png"] == hashlib.blake2b(data, digest_size=16).hexdigest()
    assert by_name["a_cat.png"] == content_id(data) == by_name["copy_of_cat.png"]
    assert by_name["a_cat.png"] != by_name["z_dog.png"]


def test_scan_and_decode_stages_split_bad_files(bad, odd):
    # The scan never decodes pixels: it refuses what the bytes or the header give away; only
    # a full decode finds truncated pixel data.
    image_set = ImageSet.from_folder(bad["empty"].parent, progress=False)
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert reasons == {
        "empty.jpg": "empty file (0 bytes)",
        "random_bytes.png": "not a supported image format (JPEG, MPO, PNG, GIF, BMP, TIFF, WEBP)",
        "text_as.jpg": "not a supported image format (JPEG, MPO, PNG, GIF, BMP, TIFF, WEBP)",
        "bomb.png": "decompression bomb: 20000x20000 = 400.0 MP > limit 89.5 MP",
    }
    assert sorted(Path(p).name for p in image_set.paths) == ["truncated.jpg", "truncated.png"]
    failures = []
    for record in image_set:
        with pytest.raises(ImageDecodeError, match="truncated") as info:
            decode_image(record.path)
        failures.append(SkippedImage(record.path, str(info.value), "decode"))
    remaining = image_set.without(failures)
    assert len(remaining) == 0 and len(remaining.skipped) == 6
    # Every odd-but-valid kind passes the scan.
    assert len(ImageSet.from_folder(odd["rgba"].parent, progress=False)) == len(odd)


def test_unreadable_entries(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "dogs" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "cats" / "loop").symlink_to(tmp_path)  # a folder link back up the tree
    image_set = ImageSet.from_folder(tmp_path, progress=False)
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert reasons["dangling.png"] == "file not found"
    assert len(image_set) == 4  # the loop is not followed back into the tree


def test_unreadable_file_is_skipped_as_permission_denied(tmp_path, monkeypatch):
    make_tree(tmp_path)
    locked = tmp_path / "dogs" / "locked.png"
    locked.write_bytes((tmp_path / "dogs/z_dog.png").read_bytes())
    locked.chmod(0)
    if os.geteuid() == 0:
        # Root reads a mode-0 file anyway (CAP_DAC_OVERRIDE), so the kernel cannot refuse it
        # here: the read raises what the kernel raises for everybody else, EACCES.
        real_read_bytes = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self.name == "locked.png":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    image_set = ImageSet.from_folder(tmp_path, progress=False)
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert reasons["locked.png"] == "cannot read file: permission denied"
    assert "locked.png" not in {Path(r.path).name for r in image_set.records}


def test_from_list_csv_and_txt(tmp_path):
    make_tree(tmp_path / "images")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "set.csv").write_text(
        "path,label\n"
        "../images/dogs/z_dog.png,dog\n"
        f"{tmp_path / 'images/cats/a_cat.png'},cat\n"
        "../images/missing.png,cat\n"
        "../images/cats,cat\n"
        "../images/cats/notes.txt,\n"
    )
    image_set = ImageSet.from_list(tmp_path / "lists" / "set.csv", progress=False)
    assert [Path(p).name for p in image_set.paths] == ["z_dog.png", "a_cat.png"]  # list order
    assert image_set.labels == ["dog", "cat"]
    assert image_set.has_labels
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert reasons == {
        "missing.png": "file not found",
        "cats": "is a folder, not a file",
        "notes.txt": "not a supported image format (JPEG, MPO, PNG, GIF, BMP, TIFF, WEBP)",
    }

    (tmp_path / "images" / "list.txt").write_text(
        "# one path per line\n\ncats/a_cat.png\n  dogs/z_dog.png  \ncats/sub/deeper/b_cat.jpg\n"
    )
    from_txt = ImageSet.from_list(
        tmp_path / "images" / "list.txt", labels_from_folders=True, progress=False
    )
    assert [Path(p).name for p in from_txt.paths] == ["a_cat.png", "z_dog.png", "b_cat.jpg"]
    assert from_txt.labels == ["cats", "dogs", "cats"]
    assert from_txt.skipped == []


def test_from_list_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(
        ValueError, match=r"needs a header with a 'path' column.*\['file', 'label'\]"
    ):
        ImageSet.from_list(tmp_path / "bad.csv")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match=r"should end in \.csv .* or \.txt .*not \.json"):
        ImageSet.from_list(tmp_path / "list.json")


def test_from_source_dispatch_and_errors(tmp_path):
    make_tree(tmp_path / "images")
    from_folder = ImageSet.from_source(
        tmp_path / "images", labels_from_folders=True, progress=False
    )
    assert from_folder == ImageSet.from_folder(
        tmp_path / "images", labels_from_folders=True, progress=False
    )
    (tmp_path / "images" / "one.txt").write_text("dogs/z_dog.png\n")
    from_list = ImageSet.from_source(tmp_path / "images" / "one.txt", progress=False)
    assert [Path(p).name for p in from_list.paths] == ["z_dog.png"]

    with pytest.raises(FileNotFoundError, match=r"image source '.*nowhere' does not exist"):
        ImageSet.from_source(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    write_text_as_image(tmp_path / "junk" / "a.jpg")
    with pytest.raises(
        ValueError, match=r"has no usable images \(1 files skipped, e\.g\. .*a\.jpg"
    ):
        ImageSet.from_source(tmp_path / "junk", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no usable images \(0 files skipped\)"):
        ImageSet.from_source(tmp_path / "empty", progress=False)
    # s3:// and gs:// are read (tests/cloud/test_remote.py); other schemes are refused.
    with pytest.raises(ValueError, match=r"scheme http:// is not supported; use s3://"):
        ImageSet.from_source("http://example.com/images")
    with pytest.raises(NotADirectoryError, match="does not exist or is not a folder"):
        ImageSet.from_folder(tmp_path / "images" / "one.txt")


def test_manifest_and_skipped_csv(tmp_path):
    make_tree(tmp_path / "images")
    image_set = ImageSet.from_folder(tmp_path / "images", labels_from_folders=True, progress=False)
    manifest = image_set.write_manifest(tmp_path / "out" / "manifest.csv")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [ImageRecord(r["path"], r["image_id"], r["label"] or None) for r in rows] == list(
        image_set
    )
    skipped_csv = image_set.write_skipped(tmp_path / "out" / "skipped.csv")
    with skipped_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [SkippedImage(r["path"], r["reason"], r["stage"]) for r in rows] == image_set.skipped
    assert len(rows) == 2


def test_shipped_sample_is_clean(sample_dir):
    image_set = ImageSet.from_folder(sample_dir, labels_from_folders=True, progress=False)
    assert image_set.skipped == [] or all(Path(s.path).suffix == ".md" for s in image_set.skipped)
    assert 4 <= len(image_set.label_names) <= 8
    counts = np.bincount(image_set.label_codes())
    assert counts.min() >= 20
    assert len(set(image_set.image_ids)) == len(image_set)  # no duplicate images
    for record in image_set.records[:: max(1, len(image_set) // 10)]:
        assert max(decode_image(record.path).size) <= 256
