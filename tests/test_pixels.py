"""The raw-pixel view: registry, features against a plain-PIL reference, extraction on Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from rayclust.config import ExtractionConfig
from rayclust.images import ImageSet, decode_image
from rayclust.views import (
    FeatureStore,
    UnknownViewError,
    build_view,
    extract_views,
    get_view_spec,
    list_views,
)
from rayclust.views.pixels import PixelGrid, PixelSource, grid_size, pixel_arch


def _reference_features(image: Image.Image, size: int) -> np.ndarray:
    """What the pixel view should give: area-averaged resize, [0, 1], channels first."""
    small = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BOX))
    return (small.astype(np.float32) / 255.0).transpose(2, 0, 1).ravel()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(load_sample_image("china.jpg"))  # 427 x 640, not square


def test_registered_sizes_and_spec():
    assert list_views("pixels*") == ["pixels", "pixels16", "pixels24", "pixels64"]
    spec = get_view_spec("pixels")
    assert (spec.arch, spec.weights) == ("pixels_32", "pixels")
    assert spec.weights_id.startswith("pixels:v1:32:")
    assert get_view_spec("pixels24").arch == "pixels_24"


def test_cache_key_changes_with_the_size_only():
    keys = {name: get_view_spec(name).key() for name in list_views("pixels*")}
    assert len(set(keys.values())) == len(keys)
    assert get_view_spec("pixels").key() == keys["pixels"]  # stable from call to call
    assert keys["pixels"] != get_view_spec("test_tiny").key()


@pytest.mark.parametrize("name, size", [("pixels", 32), ("pixels16", 16)])
def test_features_match_a_plain_pil_resize(name, size, photo):
    view = build_view(name)
    assert view.feature_dim == 3 * size * size
    assert sum(p.numel() for p in view.model.parameters()) == 0  # no weights at all
    features = view.encode([photo])
    assert features.shape == (1, 3 * size * size)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features[0], _reference_features(photo, size), atol=1e-6)


def test_whole_image_is_kept_not_cropped():
    # A wide image with a red left quarter: a centre crop to a square would cut it off.
    wide = np.zeros((40, 160, 3), dtype=np.uint8)
    wide[:, :40] = (255, 0, 0)
    wide[:, 40:] = (0, 0, 255)
    features = build_view("pixels").encode([Image.fromarray(wide)])[0].reshape(3, 32, 32)
    red, blue = features[0], features[2]
    np.testing.assert_allclose(red[:, :8], 1.0)
    np.testing.assert_allclose(blue[:, :8], 0.0)
    np.testing.assert_allclose(blue[:, 8:], 1.0)


def test_grey_and_transparent_files_give_rgb_features(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 20), 100, dtype=np.uint8), mode="L").save(grey)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(clear)
    view = build_view("pixels")
    features = view.encode([decode_image(grey), decode_image(clear)])
    np.testing.assert_allclose(features[0], 100 / 255, atol=1e-6)
    np.testing.assert_allclose(features[1], 1.0)  # transparency is composited on white


def test_bad_sizes_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"grid size=2 should be in \[4, 256\]"):
        pixel_arch(2)
    with pytest.raises(ValueError, match=r"arch='tf_efficientnet_lite0' is not a pixel grid"):
        grid_size("tf_efficientnet_lite0")
    with pytest.raises(ValueError, match=r"grid size=1000 should be in \[4, 256\]"):
        grid_size("pixels_1000")
    with pytest.raises(
        ValueError, match=r"batch shape \(2, 3, 16, 16\) should be \(n, 3, 32, 32\)"
    ):
        PixelGrid(32)(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="pixel views take no checkpoint"):
        PixelSource().weights_id("pixels_32", "/some/file.pth", 0)


def test_extract_views_stores_pixel_features(ray_session, tmp_path, photo):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        # Five crops of a real photo, each a different size and aspect ratio.
        left, top = 60 * index, 30 * index
        photo.crop((left, top, left + 200 + 20 * index, top + 150)).save(folder / f"{index}.png")
    records = ImageSet.from_source(str(folder), progress=False).records
    results = extract_views(
        records, ["pixels24"], tmp_path / "cache", ExtractionConfig(batch_size=2), progress=False
    )
    result = results["pixels24"]
    assert (result.n_extracted, result.dim) == (5, 3 * 24 * 24)
    store = FeatureStore(tmp_path / "cache", result.spec_key)
    stored = store.get([r.image_id for r in records])
    # The pixel view's decode rule: reduced scale, shortest side kept >= its grid size.
    expected = np.stack(
        [_reference_features(decode_image(r.path, target_size=24), 24) for r in records]
    )
    np.testing.assert_allclose(stored, expected, atol=1e-6)
    again = extract_views(records, ["pixels24"], tmp_path / "cache", progress=False)["pixels24"]
    assert (again.n_extracted, again.n_cached) == (0, 5)


def test_any_grid_size_resolves_without_joining_the_catalogue():
    spec = get_view_spec("pixels8")
    assert spec.arch == "pixels_8"
    assert "pixels8" not in list_views("pixels*")
    with pytest.raises(UnknownViewError):
        get_view_spec("pixels2")  # below the smallest grid
