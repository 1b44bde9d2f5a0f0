"""Deep-clustering objectives trained on a view with Ray Train: DivClust, MMDC, ICBPL.

Heads train on the view's frozen features (``features.mode=frozen``, fast on a CPU) or
together with the view's backbone on the images (``features.mode=finetune``, for a GPU:
``rayclust.deep.finetune``). Every run can go to MLflow (``tracking``).

Built on the shared layers: frozen features come from the views stage (``ViewEncoder``,
cached in ``FeatureStore`` by content id: ``rayclust.deep.features``), the K-means baseline
from ``rayclust.cluster``, and the worker context, precision and TorchTrainer launch from
``rayclust.train.runtime``, which ``rayclust train`` runs on too.

Public surface::

    fit_deep(config) -> DeepResult          one run: features, training, labels, scores,
                                            K-means on the same features, MLflow run
    DeepConfig (+ DivClustConfig, MMDCConfig, ICBPLConfig, DeepDataConfig,
                DeepFeaturesConfig, DeepTrainerConfig), load_deep_config(path, overrides)
    pedcc, one_hot_targets, hungarian_assign       fixed targets
    losses: nt_xent, cluster_contrastive_loss, diversity_loss, clustering_similarity,
            target_distance_loss, mmd_loss, augmentation_cosine_loss,
            neighbour_cosine_loss, min_cosine_distance_loss
"""

from rayclust.deep.api import DeepResult, fit_deep
from rayclust.deep.config import (
    DeepConfig,
    DeepDataConfig,
    DeepFeaturesConfig,
    DeepTrainerConfig,
    DivClustConfig,
    ICBPLConfig,
    MMDCConfig,
    load_deep_config,
)
from rayclust.deep.data import DatasetUnavailableError
from rayclust.deep.divclust import ConsensusUnavailableWarning, DynamicThreshold, pairwise_nmi
from rayclust.deep.features import FrozenFeatures, extract_frozen_features
from rayclust.deep.losses import (
    augmentation_cosine_loss,
    cluster_contrastive_loss,
    clustering_similarity,
    diversity_loss,
    min_cosine_distance_loss,
    mmd_loss,
    neighbour_cosine_loss,
    nt_xent,
    target_distance_loss,
)
from rayclust.deep.targets import hungarian_assign, one_hot_targets, pedcc

__all__ = [
    "ConsensusUnavailableWarning",
    "DatasetUnavailableError",
    "DeepConfig",
    "DeepDataConfig",
    "DeepFeaturesConfig",
    "DeepResult",
    "DeepTrainerConfig",
    "DivClustConfig",
    "DynamicThreshold",
    "FrozenFeatures",
    "ICBPLConfig",
    "MMDCConfig",
    "augmentation_cosine_loss",
    "cluster_contrastive_loss",
    "clustering_similarity",
    "diversity_loss",
    "extract_frozen_features",
    "fit_deep",
    "hungarian_assign",
    "load_deep_config",
    "min_cosine_distance_loss",
    "mmd_loss",
    "neighbour_cosine_loss",
    "nt_xent",
    "one_hot_targets",
    "pairwise_nmi",
    "pedcc",
    "target_distance_loss",
]
