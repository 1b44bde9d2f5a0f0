"""Full-backbone training (features.mode=finetune): the view's backbone trains with the head
on the images. Real data: 600 of scikit-learn's digits as 32 px RGB images; the tiny random
timm view test_tiny keeps it CPU-fast. The same run on CUDA is the gpu-marked test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rayclust.config import ConfigError
from rayclust.deep import fit_deep, load_deep_config
from rayclust.deep.finetune import BackboneHead, rotations_of
from rayclust.metrics import external_scores
from rayclust.train.model import build_backbone
from rayclust.train.runtime import autocast_dtype


def _finetune_config(deep_cache, tmp_path, method: str, *overrides: str):
    return load_deep_config(
        None,
        [
            f"method={method}",
            "data.source=digits",
            "data.max_images=600",
            "data.holdout_fraction=0.25",
            "features.mode=finetune",
            "features.view=test_tiny",
            "features.train_size=32",
            "features.augmentations=[crop]",
            f"features.cache_dir={deep_cache}",
            "trainer.backend=local",
            "trainer.epochs=5",
            "trainer.batch_size=128",
            "trainer.hidden_dim=128",
            "tracking.enabled=false",
            f"output={tmp_path / 'run'}",
            *overrides,
        ],
    )


def permutation_chance_acc(truth: np.ndarray, pred: np.ndarray, quantile: float = 0.99) -> float:
    """The ACC that ``quantile`` of random relabellings (same cluster sizes) stay under."""
    rng = np.random.default_rng(0)
    accs = [external_scores(truth, rng.permutation(pred))["acc"] for _ in range(200)]
    return float(np.quantile(accs, quantile))


def _check_backbone_learned(result, view: str = "test_tiny"):
    # 1. The backbone trained: the exported weights differ from the view's own init.
    initial = build_backbone(view).model.state_dict()
    path = result.trained_view.split("@", 1)[1]
    trained = load_file(path)
    assert trained.keys() == initial.keys()
    changed = [
        k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[k])
    ]
    weights = [k for k in initial if k.endswith(".weight")]
    assert len(changed) >= len(weights) // 2, f"only {len(changed)} backbone tensors changed"
    # 2. The objective went down.
    objective = result.objective
    assert objective[-1] < objective[0], objective
    # 3. Held-out images (never trained on) cluster far better than random labellings.
    holdout = result.metrics["holdout"]
    truth = result.truth[result.holdout_index]
    chance = permutation_chance_acc(truth, result.labels[result.holdout_index])
    # (measured: ACC 0.33-0.39 against a 99th percentile of 0.23-0.25; NMI ~0.4)
    assert holdout["acc"] > chance + 0.05, (holdout, chance)
    assert holdout["nmi"] > 0.25, holdout


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("divclust", ["divclust.n_heads=3", "divclust.consensus_heads=2"]),
        # rotation task on rotated images, then the K-means refinement
        ("mmdc", ["mmdc.refine_epochs=1"]),
    ],
)
def test_full_backbone_training_learns(deep_cache, tmp_path, method, overrides):
    result = fit_deep(_finetune_config(deep_cache, tmp_path, method, *overrides))
    _check_backbone_learned(result)
    assert result.reports["training"]["device"] == "cpu"
    assert result.reports["training"]["autocast"] == "none"  # AMP is CUDA only
    assert result.reports["kmeans_baseline"]["features"] == "fine-tuned backbone"
    if method == "mmdc":
        assert [h["stage"] for h in result.history].count("refine") == 1
        assert result.history[-2]["rotation_accuracy"] > 0.4  # 4 angles: chance 0.25
        assert result.reports["rotation_accuracy_holdout"] > 0.4
    # The exported backbone is a view: built from the file, it computes what training
    # ended with.
    from rayclust.views import build_view

    view = build_view(result.trained_view)
    x = torch.rand(2, 3, 32, 32)
    reference = build_backbone("test_tiny").model
    reference.load_state_dict(load_file(result.trained_view.split("@", 1)[1]))
    torch.testing.assert_close(view.model(x), reference.eval()(x))


def test_full_backbone_icbpl_on_ray_train(ray_session, deep_cache, tmp_path):
    """The same through a Ray Train worker (device from ray.train.torch.get_device())."""
    result = fit_deep(
        _finetune_config(
            deep_cache,
            tmp_path,
            "icbpl",
            "trainer.backend=ray",
            "icbpl.mmd_weight=10",
            "icbpl.n_neighbors=2",
            "icbpl.knn_refresh_epochs=3",
        )
    )
    _check_backbone_learned(result)
    assert result.checkpoint_path is not None
    assert result.history[-1]["neighbour_refreshes"] == 1.0
    assert result.reports["training"]["world_size"] == 1


@pytest.mark.gpu
def test_full_backbone_training_on_cuda(deep_cache, tmp_path):
    """The same run on the GPU through Ray Train's device, with the backbone under AMP."""
    result = fit_deep(
        _finetune_config(
            deep_cache,
            tmp_path,
            "icbpl",
            "trainer.use_gpu=true",
            "trainer.backend=ray",
            "icbpl.mmd_weight=10",
            "icbpl.n_neighbors=2",
        )
    )
    _check_backbone_learned(result)
    assert result.reports["training"]["device"].startswith("cuda")
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert result.reports["training"]["autocast"] == expected


def test_rotations_of_orders_angles_per_image():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2, 3, 2, 2)
    turned = rotations_of(images)
    assert turned.shape == (8, 3, 2, 2)
    for i in range(2):
        for k in range(4):
            torch.testing.assert_close(turned[4 * i + k], torch.rot90(images[i], k, dims=(1, 2)))
    # a 2x2 image [[a, b], [c, d]] turned 90 degrees counter-clockwise is [[b, d], [a, c]]
    assert turned[1, 0].tolist() == [[1, 3], [0, 2]]


def test_autocast_only_on_cuda():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    assert autocast_dtype("fp32", torch.device("cuda")) is None


def test_backbone_head_passes_head_arguments_and_gives_fp32():
    class Head(torch.nn.Module):
        def forward(self, x, task="cluster"):
            return x.sum(1) if task == "sum" else x

    net = BackboneHead(torch.nn.Flatten(), Head())
    x = torch.ones(2, 3, 2, 2, dtype=torch.float64)
    assert net(x).dtype == torch.float32
    assert net(x, task="sum").tolist() == [12.0, 12.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["features.mode=finetune", "features.view=pixels"], r"needs a network view"),
        (
            ["features.mode=finetune", "features.augment=noise", "features.noise_std=0.1"],
            r"features.augment=noise perturbs frozen features",
        ),
        (["features.train_size=8"], r"features.train_size=8 should be >= 16"),
        (["features.backbone_lr=0"], r"features.backbone_lr=0(\.0)? should be > 0"),
        (["features.mode=tuned"], r"features.mode='tuned' is not one of"),
    ],
)
def test_finetune_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_deep_config(None, overrides)


def test_freeze_stages_keeps_the_stem(deep_cache, tmp_path):
    """features.freeze_stages=1: the stem's weights come back unchanged, later stages train."""
    result = fit_deep(
        _finetune_config(
            deep_cache,
            tmp_path,
            "icbpl",
            "features.freeze_stages=1",
            "trainer.epochs=2",
            "icbpl.n_neighbors=1",
            "data.max_images=200",
        )
    )
    from rayclust.train.model import backbone_stages

    initial = build_backbone("test_tiny").model
    trained = load_file(result.trained_view.split("@", 1)[1])
    stem = backbone_stages(initial)[0]
    state = initial.state_dict()
    for name in stem:
        torch.testing.assert_close(trained[name], state[name])
    later = [n for stage in backbone_stages(initial)[1:] for n in stage]
    assert any(not torch.equal(trained[n], state[n]) for n in later)
