"""rayclust: cluster image collections with pretrained deep networks, on Ray.

Public entry points (imported lazily so `rayclust --help` does not load torch or Ray):
    load_config, RunConfig   typed run configuration
    run, RunResult           one end-to-end clustering run
    ImageSet                 image discovery and robust decoding          (scan)
    extract_views            cached, resumable feature extraction         (extract)
    load_features, cluster_features, Features, ClusteringResult           (reduce, cluster,
                             consensus, evaluate)
    read_run, write_report   a run folder and its HTML report             (record)
    predict, export          a run's clusters reused: new images into them, clusters as
                             folders (rayclust.reuse)
    TrainConfig              fine-tuning config (rayclust.train.fit runs it)
    DeepConfig, fit_deep     DivClust / MMDC / ICBPL on a view's features
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "rayclust.config",
    "RunConfig": "rayclust.config",
    "ConfigError": "rayclust.config",
    "run": "rayclust.pipeline",
    "RunResult": "rayclust.pipeline",
    "ImageSet": "rayclust.images",
    "extract_views": "rayclust.views",
    "Features": "rayclust.clustering",
    "ClusteringResult": "rayclust.clustering",
    "load_features": "rayclust.clustering",
    "cluster_features": "rayclust.clustering",
    "read_run": "rayclust.runs",
    "write_report": "rayclust.report",
    "predict": "rayclust.reuse",
    "export": "rayclust.reuse",
    "TrainConfig": "rayclust.train",
    "DeepConfig": "rayclust.deep",
    "fit_deep": "rayclust.deep",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rayclust' has no attribute {name!r}")
