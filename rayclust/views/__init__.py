"""Views: pretrained backbones as feature extractors.

Public surface (import from here, not from the modules):

- registry: ``list_views``, ``describe_view``, ``register_view``, ``get_view_spec``,
  ``resolve_view`` (name or spec -> ViewSpec, resolved once; cache key ``spec.key()``),
  ``build_view``;
- in-process encoding: ``ViewEncoder(view, device).encode(pil_images)`` -> float32 features;
- extraction: ``extract_views(records, views, cache_root, config, ..., engine=None)`` with
  the engines ``"local"`` (no Ray), ``"actors"``, ``"stream"`` and ``"auto"``
  (``resolve_engine``); ``ExtractionResult``; ``extraction_specs`` (the specs, with
  precision and decode rule, whose keys name the stores an extraction writes);
- precision: ``resolve_precision(requested, device_type)``, ``cpu_has_native_bf16()``;
- the cache: ``FeatureStore``;
- weights: checkpoint files and the errors of weight sources.
"""

from rayclust.views.extract import (
    ENGINES,
    ExtractionResult,
    extract_views,
    extraction_specs,
    resolve_engine,
)
from rayclust.views.precision import cpu_has_native_bf16, resolve_precision
from rayclust.views.registry import (
    RegisteredView,
    UnknownViewError,
    build_view,
    describe_view,
    get_view_spec,
    list_views,
    register_view,
    resolve_view,
    view_access,
)
from rayclust.views.spec import View, ViewSpec
from rayclust.views.store import FeatureStore
from rayclust.views.weights import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    WeightsUnavailableError,
    load_state_dict_file,
    save_state_dict_file,
)
from rayclust.views.worker import ViewEncoder

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
]
