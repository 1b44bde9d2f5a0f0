"""Issue 17: strong hub backbones by short name (offline: a one-line error naming the pre-fetch
command) and the multi-layer GeM variant ``<view>+gem`` (one forward, own cache key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayclust.cli import main
from rayclust.images import to_rgb
from rayclust.views import (
    ViewEncoder,
    WeightsUnavailableError,
    build_view,
    check_weights,
    get_view_spec,
    list_views,
    view_access,
)
from rayclust.views.pooling import gem
from rayclust.views.precision import keep_leading_layers_fp32

SHORT_NAMES = {
    "dinov2_small": "vit_small_patch14_dinov2.lvd142m",
    "clip_b16": "vit_base_patch16_clip_224.openai",
}


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """No network and an empty Hugging Face cache, even on a machine with a network."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- hub names


def test_short_hub_names_resolve_to_the_pinned_timm_weights(capsys):
    hub_views = set(list_views(weights="timm-hub"))
    for short, long in SHORT_NAMES.items():
        spec = get_view_spec(short)
        assert spec.arch == long and spec.weights_id == f"timm-hub:{long}"
        assert view_access(short) == "network" and short in hub_views
        # the key names the weights, not the name: the two names share one feature cache
        assert spec.key() == get_view_spec(long).key()
    assert main(["views", "clip_*"]) == 0
    line = capsys.readouterr().out.splitlines()[0].split()
    assert line[:2] == ["clip_b16", "network"]


def test_uncached_hub_weights_offline_fail_in_one_line_naming_the_fetch(
    offline_hub, sample_dir, tmp_path, capsys
):
    with pytest.raises(WeightsUnavailableError) as caught:
        check_weights("dinov2_small")
    message = str(caught.value)
    assert "\n" not in message
    assert "`rayclust fetch-weights dinov2_small`" in message and "HF_HUB_OFFLINE=1" in message
    # a run stops before any work, exit 2, one line; the fetch command itself exits 1
    output = tmp_path / "run"
    assert main(["cluster", str(sample_dir), "--view", "clip_b16", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rayclust fetch-weights clip_b16" in err
    assert not output.exists()
    assert main(["fetch-weights", "efficientnet_lite0", "clip_b16"]) == 1
    captured = capsys.readouterr()
    assert "efficientnet_lite0: offline weights" in captured.out
    assert "fetch-weights clip_b16" in captured.err


def test_pre_fetched_hub_weights_in_a_copied_cache_pass_offline(offline_hub):
    # the layout huggingface_hub writes: refs/main names the snapshot holding the file
    repo = offline_hub / "models--timm--vit_small_patch14_dinov2.lvd142m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    check_weights("dinov2_small")  # no error: cached, no request made
    with pytest.raises(WeightsUnavailableError):
        check_weights("clip_b16")


# --------------------------------------------------------------------------- multi-layer GeM


def test_gem_variant_has_its_own_key_and_refuses_pixels():
    base, variant = get_view_spec("test_tiny"), get_view_spec("test_tiny+gem")
    assert variant.pool == "gem-multilayer" and base.pool == "default"
    assert (variant.arch, variant.weights_id) == (base.arch, base.weights_id)
    assert variant.key() != base.key()
    with pytest.raises(ValueError, match="pixels have none"):
        get_view_spec("pixels+gem")


def test_gem_blocks_per_architecture():
    # EfficientNet: head map, then the stride-32 and stride-16 stage outputs
    tiny = build_view("test_tiny+gem")
    assert tiny.model.block_dims == [256, 64, 48] and tiny.feature_dim == 368
    # bf16 extraction still finds the stem inside the wrapper to keep it in fp32
    assert "conv_stem" in keep_leading_layers_fp32(tiny.model)
    # ResNet: the last stage is the final map itself, pooled once
    assert build_view("test_tiny_resnet+gem").model.block_dims == [96, 192]
    with pytest.raises(ValueError, match="needs a CNN backbone"):
        build_view("test_tiny_vit+gem")


def test_lite0_gem_on_the_sample_one_forward_deterministic(sample_dir):
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    images = [to_rgb(Image.open(p)) for p in paths[::12]]
    features = ViewEncoder("efficientnet_lite0+gem").encode(images)
    assert features.shape == (len(images), 1280 + 320 + 112)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    again = ViewEncoder("efficientnet_lite0+gem").encode(images)
    np.testing.assert_array_equal(features, again)
    for start, stop in ((0, 1280), (1280, 1600), (1600, 1712)):
        np.testing.assert_allclose(np.linalg.norm(features[:, start:stop], axis=1), 1, atol=1e-5)
    # first block: the L2-normalised GeM of the plain view's own final feature map
    plain = build_view("efficientnet_lite0")
    with torch.inference_mode():
        final_map = plain.model.forward_features(plain.preprocess(images))
        expected = torch.nn.functional.normalize(gem(final_map), dim=1).numpy()
        # and GeM at p=1 is the plain view's average pooling, so p is the only change
        np.testing.assert_allclose(
            gem(final_map, p=1.0).numpy(), plain.encode(images), rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(features[:, :1280], expected, atol=1e-4)
