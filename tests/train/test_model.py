"""The network being trained: gradients reach the backbone, frozen stages stay put,
and a saved backbone comes back as a view with the same features."""

import numpy as np
import pytest
import torch

from rayclust.train.data import ImageBatcher, load_splits
from rayclust.train.export import checkpoint_view_name, save_backbone
from rayclust.train.losses import EpisodicLoss
from rayclust.train.model import (
    FineTuneNet,
    backbone_stages,
    build_backbone,
    freeze_stages,
    set_train_mode,
)
from rayclust.train.sampler import EpisodeSampler


@pytest.fixture(scope="module")
def episode_batch(sample_classes):
    """One real 2-way 2-shot 2-query episode of sample images at 64 px."""
    backbone = build_backbone("test_tiny")
    split = load_splits(str(sample_classes.source), {"train": sample_classes.train})["train"]
    episode = EpisodeSampler(split.labels, 2, 2, 2, seed=0).episode(0)
    batcher = ImageBatcher(split.paths, 64, backbone.mean, backbone.std, backbone.crop_pct)
    images = batcher.batch(np.concatenate([episode.support, episode.query]))
    return images, episode


def _episode_loss(net, images, episode, alpha=0.5):
    features = net(images)
    n = len(episode.support)
    return EpisodicLoss(alpha=alpha)(
        features[:n],
        torch.as_tensor(episode.support_labels),
        features[n:],
        torch.as_tensor(episode.query_labels),
        episode.n_way,
    ).loss


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_episodic_loss_gradients_reach_every_backbone_stage(episode_batch, alpha):
    images, episode = episode_batch
    backbone = build_backbone("test_tiny")
    net = set_train_mode(FineTuneNet(backbone.model, backbone.feature_dim), True)
    _episode_loss(net, images, episode, alpha).backward()
    params = dict(net.backbone.named_parameters())
    for stage in backbone_stages(net.backbone):
        grads = [params[name].grad for name in stage]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads), f"no gradient in stage {stage[0]}"


def test_classic_head_gradients_reach_backbone(episode_batch):
    images, episode = episode_batch
    backbone = build_backbone("test_tiny")
    net = FineTuneNet(backbone.model, backbone.feature_dim, n_classes=3)
    labels = torch.as_tensor(np.concatenate([episode.support_labels, episode.query_labels]))
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    assert net.head.weight.grad.abs().sum() > 0
    assert net.backbone.conv_stem.weight.grad.abs().sum() > 0


def test_frozen_stages_get_no_gradient_and_keep_their_batch_norm_statistics(episode_batch):
    images, episode = episode_batch
    backbone = build_backbone("test_tiny")
    net = FineTuneNet(backbone.model, backbone.feature_dim)
    stages = backbone_stages(net.backbone)
    frozen = freeze_stages(net.backbone, 2)
    assert frozen == stages[0] + stages[1]
    set_train_mode(net, True)
    stem_stats = net.backbone.bn1.running_mean.clone()
    late_bn = net.backbone.bn2
    late_stats = late_bn.running_mean.clone()
    _episode_loss(net, images, episode).backward()
    params = dict(net.backbone.named_parameters())
    assert all(params[name].grad is None for name in frozen)
    assert any(
        params[name].grad is not None and params[name].grad.abs().sum() > 0 for name in stages[-1]
    )
    assert not net.backbone.bn1.training and late_bn.training
    assert torch.equal(net.backbone.bn1.running_mean, stem_stats)
    assert not torch.equal(late_bn.running_mean, late_stats)


def test_freezing_every_stage_is_refused():
    backbone = build_backbone("test_tiny")
    n = len(backbone_stages(backbone.model))
    with pytest.raises(
        ValueError, match=rf"freeze_stages={n} should be < the {n} stages of EfficientNet"
    ):
        freeze_stages(backbone.model, n)


def test_saved_backbone_round_trips_as_a_checkpoint_view(tmp_path, episode_batch):
    from rayclust.views import build_view, get_view_spec

    images, _ = episode_batch
    backbone = build_backbone("test_tiny")
    with torch.no_grad():  # perturb so the weights differ from the seeded random init
        for p in backbone.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_backbone(backbone.model, tmp_path / "ft.safetensors", arch=backbone.arch)
    name = checkpoint_view_name(backbone.arch, path)
    assert name == f"test_efficientnet@{path.resolve()}"
    view = build_view(get_view_spec(name))
    backbone.model.eval()
    with torch.no_grad():
        expected = backbone.model(images).numpy()
    assert view.feature_dim == backbone.feature_dim
    np.testing.assert_allclose(view.embed(images), expected, rtol=1e-5, atol=1e-6)
    untouched = build_view(get_view_spec("test_tiny"))
    assert not np.allclose(untouched.embed(images), expected, atol=1e-4)
