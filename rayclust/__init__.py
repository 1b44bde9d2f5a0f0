"""rayclust: cluster image collections with pretrained deep networks, on Ray.

Public entry points (imported lazily so `rayclust --help` does not load torch or Ray):
    load_config, RunConfig   typed run configuration
    run, RunResult           one end-to-end clustering run
    ImageSet                 image discovery and robust decoding
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
    "TrainConfig": "rayclust.train",
    "DeepConfig": "rayclust.deep",
    "fit_deep": "rayclust.deep",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rayclust' has no attribute {name!r}")
