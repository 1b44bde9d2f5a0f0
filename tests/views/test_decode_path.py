"""The decode path of extraction: one decode per image for every view, reduced-scale decode
giving each view what it would get alone, bytes hashed where they are decoded (a file edited
after the scan is never stored under its old id), extreme aspect ratios refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rayclust.config import ExtractionConfig
from rayclust.images import (
    CHANGED_SINCE_SCAN,
    ImageDecodeError,
    ImageSet,
    decode_image,
    decode_variants,
    probe_image,
)
from rayclust.views import FeatureStore, extract_views, extraction_specs
from rayclust.views import local as local_engine
from rayclust.views.worker import ViewWorker

pytestmark = pytest.mark.timeout(300)

VIEWS = ["test_tiny", "test_tiny_resnet", "pixels"]
CONFIG = ExtractionConfig(batch_size=4, engine="local", precision="fp32")


def _drawing(index: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(index)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, min(size) // 2, 2))
        x1, y1 = x0 + size[0] // 3, y0 + size[1] // 3
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


@pytest.fixture
def folder(tmp_path):
    """PNGs and JPEGs, small and big (a big JPEG decodes at 1/8 scale for every view)."""
    images = tmp_path / "images"
    images.mkdir()
    for index in range(5):
        _drawing(index, (120 + 10 * index, 90)).save(images / f"small{index}.png")
    _drawing(10, (200, 150)).save(images / "small.jpg", quality=90)
    _drawing(11, (1600, 1200)).save(images / "big.jpg", quality=90)
    return images


def _encoded(bytes_or_image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    bytes_or_image.save(buffer, fmt, quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(1600, 1200), (640, 480), (50, 3000)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_variants_gives_each_size_what_it_would_get_alone(size, fmt):
    data = _encoded(_drawing(3, size), fmt)
    sizes = [256, 274, 32, None]
    together = decode_variants(data, sizes)
    for target in sizes:
        alone = decode_image(data, target_size=target)
        assert together[target].size == alone.size
        assert np.array_equal(np.asarray(together[target]), np.asarray(alone))
        if target is not None:
            assert min(alone.size) >= min(target, *size)  # never below what the view needs
    if fmt == "JPEG" and size == (1600, 1200):
        assert together[256].size == together[274].size == (400, 300)  # DCT scaling at 1/4
        assert together[32].size == (50, 38)  # at 1/8 (200x150), then box-reduced by 4


def test_local_engine_decodes_each_image_once_for_every_view(folder, tmp_path, monkeypatch):
    calls = []
    original = local_engine.decode_variants

    def counting(data, sizes, *args, **kwargs):
        calls.append(len(data))
        return original(data, sizes, *args, **kwargs)

    monkeypatch.setattr(local_engine, "decode_variants", counting)
    images = ImageSet.from_source(str(folder), progress=False)
    results = extract_views(images.records, VIEWS, tmp_path / "cache", CONFIG, progress=False)
    assert len(calls) == len(images.records)  # one decode per image, not one per view
    assert all(r.n_extracted == len(images.records) for r in results.values())

    # Each view's features are those of the per-view decode the Ray engines run.
    items = [(r.image_id, r.path) for r in images.records]
    for spec in extraction_specs(VIEWS, CONFIG):
        worker = ViewWorker(spec, device="cpu")
        alone = worker.extract(items)
        stored = FeatureStore(tmp_path / "cache", spec.key()).get(alone.ids)
        assert alone.ids == [i for i, _ in items] and not alone.failures
        np.testing.assert_array_equal(stored, alone.features)
        worker.close()


def test_an_image_edited_after_the_scan_is_not_stored_under_its_old_id(folder, tmp_path):
    images = ImageSet.from_source(str(folder), progress=False)
    edited = next(r for r in images.records if r.path.endswith("small2.png"))
    _drawing(99, (130, 90)).save(edited.path)  # new content, same name, after the scan
    cache = tmp_path / "cache"
    (result,) = extract_views(images.records, "test_tiny", cache, CONFIG, progress=False).values()
    assert [(f.path, f.reason.split(":")[0]) for f in result.failed] == [
        (edited.path, CHANGED_SINCE_SCAN)
    ]
    store = FeatureStore(cache, result.spec_key)
    assert edited.image_id not in store  # the old id holds no features of the new content
    assert edited.image_id not in store.failures()  # and is not marked undecodable for good
    assert result.n_extracted == len(images.records) - 1 and result.n_remaining == 0

    # The next scan sees the new content under its new id and extracts it.
    rescanned = ImageSet.from_source(str(folder), progress=False)
    new_id = next(r.image_id for r in rescanned.records if r.path == edited.path)
    assert new_id != edited.image_id
    (again,) = extract_views(rescanned.records, "test_tiny", cache, CONFIG, progress=False).values()
    assert again.n_extracted == 1 and not again.failed
    worker = ViewWorker(extraction_specs("test_tiny", CONFIG)[0], device="cpu")
    expected = worker.extract([(new_id, edited.path)]).features
    np.testing.assert_array_equal(FeatureStore(cache, again.spec_key).get([new_id]), expected)


def test_the_ray_engines_worker_refuses_changed_bytes_too(folder):
    images = ImageSet.from_source(str(folder), progress=False)
    record = images.records[0]
    with open(record.path, "ab") as file:
        file.write(b"\0")  # appended bytes: same pixels, other content
    worker = ViewWorker(extraction_specs("test_tiny", CONFIG)[0], device="cpu")
    output = worker.extract([(record.image_id, record.path)])
    assert output.ids == [] and output.failures[record.image_id].startswith(CHANGED_SINCE_SCAN)
    worker.close()


def test_extreme_aspect_ratio_is_refused_from_the_header(tmp_path):
    line = tmp_path / "line.png"
    Image.new("RGB", (20000, 1), (200, 10, 10)).save(line)
    assert line.stat().st_size < 100_000
    data = line.read_bytes()
    with pytest.raises(ImageDecodeError, match=r"extreme aspect ratio: 20000x1 pixels"):
        probe_image(data)
    with pytest.raises(ImageDecodeError, match=r"extreme aspect ratio"):
        decode_image(data, target_size=256)
    banner = tmp_path / "banner.png"
    Image.new("RGB", (3000, 30), (10, 200, 10)).save(banner)  # 100:1 is still an image
    assert decode_image(banner.read_bytes(), target_size=256).size == (3000, 30)
    images = ImageSet.from_source(str(tmp_path), progress=False)
    assert [r.path for r in images.records] == [str(banner)]
    assert [(s.path, s.reason) for s in images.skipped] == [
        (str(line), "extreme aspect ratio: 20000x1 pixels (more than 100:1)")
    ]
