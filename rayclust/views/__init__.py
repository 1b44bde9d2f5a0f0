"""Views: pretrained backbones as feature extractors.

Public surface (import from here, not from the modules):

- registry: ``list_views``, ``describe_view``, ``register_view``, ``get_view_spec``,
  ``resolve_view`` (name or spec -> ViewSpec, resolved once; cache key ``spec.key()``),
  ``build_view``, ``check_weights`` (are the weights available here, before heavy work);
- in-process encoding: ``ViewEncoder(view, device).encode(pil_images)`` -> float32 features;
- extraction: ``extract_views(records, views, cache_root, config, ..., engine=None)`` with
  the engines ``"local"`` (no Ray), ``"actors"``, ``"stream"`` and ``"auto"``
  (``resolve_engine``); ``scan_and_extract_stream`` (``extraction.scan: workers``: the
  stream engine's workers scan as they extract); ``ExtractionResult``; ``extraction_specs`` (the specs, with
  precision and decode rule, whose keys name the stores an extraction writes);
- precision: ``resolve_precision(requested, device_type)``, ``cpu_has_native_bf16()``;
- the cache: ``FeatureStore``;
- weights: checkpoint files and the errors of weight sources.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use: reading the FeatureStore (a shard actor, the clustering stage)
# should not pay for torch and timm, which the encoders need.
_EXPORTS = {
    "ENGINES": "rayclust.views.extract",
    "ExtractionResult": "rayclust.views.extract",
    "extract_views": "rayclust.views.extract",
    "extraction_specs": "rayclust.views.extract",
    "resolve_engine": "rayclust.views.extract",
    "scan_and_extract_stream": "rayclust.views.stream_scan",
    "cpu_has_native_bf16": "rayclust.views.precision",
    "resolve_precision": "rayclust.views.precision",
    "RegisteredView": "rayclust.views.registry",
    "UnknownViewError": "rayclust.views.registry",
    "build_view": "rayclust.views.registry",
    "check_weights": "rayclust.views.registry",
    "describe_view": "rayclust.views.registry",
    "get_view_spec": "rayclust.views.registry",
    "list_views": "rayclust.views.registry",
    "register_view": "rayclust.views.registry",
    "resolve_view": "rayclust.views.registry",
    "view_access": "rayclust.views.registry",
    "View": "rayclust.views.spec",
    "ViewSpec": "rayclust.views.spec",
    "FeatureStore": "rayclust.views.store",
    "CheckpointMismatchError": "rayclust.views.weights",
    "UnreadableCheckpointError": "rayclust.views.weights",
    "UnsafeCheckpointError": "rayclust.views.weights",
    "WeightsUnavailableError": "rayclust.views.weights",
    "load_state_dict_file": "rayclust.views.weights",
    "save_state_dict_file": "rayclust.views.weights",
    "ViewEncoder": "rayclust.views.worker",
}

__all__ = [
    "ENGINES",
    "CheckpointMismatchError",
    "ExtractionResult",
    "FeatureStore",
    "RegisteredView",
    "UnknownViewError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "View",
    "ViewEncoder",
    "ViewSpec",
    "WeightsUnavailableError",
    "build_view",
    "check_weights",
    "describe_view",
    "cpu_has_native_bf16",
    "extract_views",
    "extraction_specs",
    "get_view_spec",
    "list_views",
    "view_access",
    "load_state_dict_file",
    "register_view",
    "resolve_engine",
    "resolve_precision",
    "resolve_view",
    "save_state_dict_file",
    "scan_and_extract_stream",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rayclust.views' has no attribute {name!r}")
