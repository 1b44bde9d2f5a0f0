"""Views: pretrained backbones as feature extractors (registry, weight sources, building)."""

from rayclust.views.extract import ExtractionResult, extract_views
from rayclust.views.registry import (
    RegisteredView,
    UnknownViewError,
    build_view,
    describe_view,
    get_view_spec,
    list_views,
    register_view,
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

__all__ = [
    "CheckpointMismatchError",
    "ExtractionResult",
    "FeatureStore",
    "RegisteredView",
    "UnknownViewError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "View",
    "ViewSpec",
    "WeightsUnavailableError",
    "build_view",
    "describe_view",
    "extract_views",
    "get_view_spec",
    "list_views",
    "load_state_dict_file",
    "register_view",
    "save_state_dict_file",
]
