"""Reusing a finished run's clusters: new images into them, and the clusters as folders.

Public surface:
- ``predict(run_dir, source, output=None, ...) -> Prediction``  (``rayclust predict``)
- ``export(run_dir, dest, copy=False, force=False) -> ExportResult``  (``rayclust export``)
- ``ClusterModel``: what a cluster run saves (model.npz, model.json) to assign new images;
  ``RunModelError`` for a run folder without it.

Modules: ``model`` (the saved clusters: build, save, load, assign), ``prediction``
(predict), ``folders`` (export).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use: the record stage needs only ``model``, not the commands' modules.
_EXPORTS = {
    "PREDICTION_COLUMNS": "rayclust.reuse.prediction",
    "Prediction": "rayclust.reuse.prediction",
    "predict": "rayclust.reuse.prediction",
    "ExportResult": "rayclust.reuse.folders",
    "export": "rayclust.reuse.folders",
    "ClusterModel": "rayclust.reuse.model",
    "RunModelError": "rayclust.reuse.model",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rayclust.reuse' has no attribute {name!r}")
