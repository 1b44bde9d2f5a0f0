"""Fine-tuning of view backbones on Ray Train: classic (cross-entropy on a new head) or
episodic (prototypes, cross-entropy plus the multivariate scatter loss), with class splits,
per-epoch checkpoints, restarts and export as a view ``arch@backbone.safetensors``.

Import from here: ``from rayclust.train import TrainConfig, fit``. The training runtime
(worker context, precision, TorchTrainer launch) is ``rayclust.train.runtime``, shared with
``rayclust.deep``.
"""

from rayclust.train.api import TrainResult, fit
from rayclust.train.config import TrainConfig
from rayclust.train.data import ImageBatcher, LabeledImages, load_splits
from rayclust.train.export import checkpoint_view_name, save_backbone
from rayclust.train.losses import (
    EpisodicLoss,
    class_prototypes,
    prototype_logits,
    scatter_ratio,
    scatter_terms,
)
from rayclust.train.model import FineTuneNet, backbone_stages, build_backbone, freeze_stages
from rayclust.train.sampler import Episode, EpisodeSampler
from rayclust.train.schedule import LRFactor

__all__ = [
    "Episode",
    "EpisodeSampler",
    "EpisodicLoss",
    "FineTuneNet",
    "ImageBatcher",
    "LRFactor",
    "LabeledImages",
    "TrainConfig",
    "TrainResult",
    "backbone_stages",
    "build_backbone",
    "checkpoint_view_name",
    "class_prototypes",
    "fit",
    "freeze_stages",
    "load_splits",
    "prototype_logits",
    "save_backbone",
    "scatter_ratio",
    "scatter_terms",
]
