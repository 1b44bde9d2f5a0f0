"""The per-view worker: a view built where it runs, turning images into features.

Two classes, no Ray in either (the engines wrap them in actors, or not at all):

- :class:`ViewEncoder`: a view built in this process; PIL images or transformed tensors in,
  float32 features out. The one forward pass of the package: every engine runs it, so the
  same images give the same features whichever engine (or caller) ran them.
- :class:`ViewWorker`: an encoder that also reads and decodes files (``decode_for_view``,
  robust: an undecodable image becomes a failure reason, never an exception), on a thread
  pool apart from the forward thread, times both, and honours the test hooks below.

Test hooks (honest ones: they kill a real process or slow a real forward pass), read from the
driver's environment by :meth:`FaultHooks.from_env` and handed to the workers:

- ``RAYCLUST_FAULT_KILL_AFTER_BATCHES=N``: the first worker of each view to finish N batches
  calls ``os._exit(1)`` while holding its next batch. ``RAYCLUST_FAULT_MARKER`` (a path
  prefix, default ``<store>/fault-injected``) gets one marker file per view so the restarted
  worker does not die again.
- ``RAYCLUST_TEST_BATCH_DELAY_S=X``: each forward pass also sleeps X seconds, so tests can
  see whether views really run at the same time without needing heavy models.
- ``RAYCLUST_TEST_FORWARD_LOG=DIR``: each forward pass writes a JSON file (node id, pid,
  image ids) into DIR, so a test can count forward passes on nodes that were removed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rayclust.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    read_checked,
    to_rgb,
)
from rayclust.ray_session import current_node_id
from rayclust.views.precision import autocast, keep_leading_layers_fp32
from rayclust.views.registry import build_view, resolve_view
from rayclust.views.spec import DRAFT_DECODE, ViewSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

    from rayclust.views.store import FeatureStore

FAULT_KILL_ENV = "RAYCLUST_FAULT_KILL_AFTER_BATCHES"
FAULT_MARKER_ENV = "RAYCLUST_FAULT_MARKER"
BATCH_DELAY_ENV = "RAYCLUST_TEST_BATCH_DELAY_S"
FORWARD_LOG_ENV = "RAYCLUST_TEST_FORWARD_LOG"


@dataclass(frozen=True)
class FaultHooks:
    """Fault injection and tracing for tests; the default does nothing."""

    kill_after_batches: int | None = None
    fault_marker: str | None = None  # created once; its existence stops further kills
    batch_delay_s: float = 0.0
    forward_log: str | None = None  # folder: one JSON file per forward pass

    @classmethod
    def from_env(cls, store: FeatureStore) -> FaultHooks:
        """The hooks the environment asks for, with a kill marker per view (store)."""

        def number(env: str, kind: type) -> Any:
            raw = os.environ.get(env)
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r} should be a {kind.__name__}") from None

        kill_after = number(FAULT_KILL_ENV, int)
        prefix = os.environ.get(FAULT_MARKER_ENV) or os.path.join(str(store.path), "fault-injected")
        return cls(
            kill_after_batches=kill_after,
            fault_marker=f"{prefix}-{store.spec_key}" if kill_after is not None else None,
            batch_delay_s=number(BATCH_DELAY_ENV, float) or 0.0,
            forward_log=os.environ.get(FORWARD_LOG_ENV) or None,
        )


@dataclass
class DecodedBatch:
    """A batch after decoding: the tensors of the images that made it, why the others did not."""

    ids: list[str]
    tensors: list[torch.Tensor]
    failures: dict[str, str]  # image id -> reason
    seconds: float


@dataclass
class BatchOutput:
    """A batch after its forward pass: what an engine hands to the shard writer."""

    ids: list[str]
    features: np.ndarray  # float32 [len(ids), dim]
    failures: dict[str, str]
    forward_span: tuple[float, float]  # epoch seconds
    decode_seconds: float


def decode_for_view(
    path: str,
    transform: Callable[[Image.Image], torch.Tensor],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: Mapping[str, Any] | None = None,
    *,
    image_id: str | None = None,
    target_size: int | None = None,
) -> tuple[torch.Tensor | None, str | None]:
    """Read, decode and transform one image: ``(tensor, None)`` or ``(None, reason)``.

    The bytes are read once (``read_checked``): with ``image_id`` given, bytes that no longer
    hash to it are refused (changed since the scan) instead of being stored under it.
    ``target_size``: the view's ``decode_size`` for a reduced-scale decode (None: full).
    """
    try:
        data = read_checked(path, image_id, storage_options)
        image = decode_image(data, max_pixels, target_size=target_size)
    except ImageDecodeError as exc:
        return None, str(exc)
    try:
        return transform(image), None
    except Exception as exc:  # a transform that chokes on one image must not sink the batch
        return None, f"transform failed: {type(exc).__name__}: {exc}"


def default_device(use_gpu: bool | None = None) -> torch.device:
    """CUDA when it is there (and not refused), else the CPU. Under Ray, actors that did not
    ask for a GPU see none, so inside an actor this follows the declared resources."""
    if use_gpu is not False and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class ViewEncoder:
    """A view built in this process: images -> float32 features, one row per image.

    Parameters
    ----------
    view : a registry name (``"efficientnet_lite0"``, ``"pixels"``, ``"resnet50@ft.pth"``,
        ...) or a ViewSpec; resolved once (``self.spec``, cache key ``self.key``). The
        forward runs at ``spec.precision`` (autocast for bf16 / fp16), channels_last;
        files are decoded as ``spec.decode`` says (``decode_size``).
    device : where the model runs.
    """

    def __init__(self, view: str | ViewSpec, device: str | torch.device = "cpu") -> None:
        self.spec = resolve_view(view)
        self.view = build_view(self.spec, device=device)
        # channels_last: oneDNN and tensor cores run NHWC convolutions fastest.
        self.model = self.view.model.eval().to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.transform = self.view.transform
        self.precision = self.spec.precision
        if self.precision != "fp32":
            keep_leading_layers_fp32(self.model)
        # The shortest side a reduced-scale decode keeps (None: decode every pixel).
        self.decode_size = self.view.decode_size if self.spec.decode == DRAFT_DECODE else None

    @property
    def key(self) -> str:
        """The view's cache key (``FeatureStore`` folder name)."""
        return self.spec.key()

    @property
    def feature_dim(self) -> int:
        return self.view.feature_dim

    def encode_tensors(self, tensors: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        """Transformed CHW tensors (or one NCHW batch) -> float32 [n, feature_dim]."""
        if len(tensors) == 0:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        batch = tensors if isinstance(tensors, torch.Tensor) else torch.stack(list(tensors))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        if batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.precision, self.device):
            features = self.model(batch).float().cpu().numpy()
        return np.ascontiguousarray(features, dtype=np.float32)

    def encode(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """PIL images -> float32 [len(images), feature_dim], with the view's eval transform.

        Images in another mode than RGB go through ``rayclust.images.to_rgb`` first, as
        decoded files do. ``batch_size`` bounds the memory of one forward pass.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} should be >= 1")
        parts = [np.empty((0, self.feature_dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            tensors = [self.transform(img if img.mode == "RGB" else to_rgb(img)) for img in chunk]
            parts.append(self.encode_tensors(tensors))
        return np.concatenate(parts)


class ViewWorker(ViewEncoder):
    """An encoder that reads its own images: ``(image id, path)`` batches -> BatchOutput.

    Runs as a Ray actor body (``rayclust.views.actors``, ``rayclust.views.stream``) or in
    the caller's process (``rayclust.views.local``). Decoding runs on its own thread pool:
    measured on 2 CPUs, forward passes in a thread that had also decoded and transformed
    the images ran 2-8x slower. A lock keeps forward passes serial, so an engine may call
    ``extract`` twice at once and have one batch decode while the other runs its forward.

    Parameters
    ----------
    spec : the view (a name is resolved).
    num_threads : torch threads for the forward pass; None leaves the process setting alone.
    decode_workers : threads decoding and transforming images.
    max_pixels : larger images are decode failures.
    hooks : test hooks, see the module docstring.
    storage_options : s3fs / gcsfs options for s3:// / gs:// paths (rayclust.remote).
    device : None picks CUDA when this process sees a GPU (see ``default_device``).
    """

    def __init__(
        self,
        spec: str | ViewSpec,
        num_threads: int | None = None,
        decode_workers: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        hooks: FaultHooks = FaultHooks(),
        storage_options: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(max(1, num_threads))
        super().__init__(spec, default_device() if device is None else device)
        self.max_pixels = max_pixels
        self.decode_workers = max(1, decode_workers)
        self._decoder: ThreadPoolExecutor | None = None  # started on the first decode
        self.forward_lock = threading.Lock()
        self.n_batches = 0
        self.hooks = hooks
        self.storage_options = dict(storage_options) if storage_options else None

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "dim": self.feature_dim}

    def decode(self, items: Sequence[tuple[str, str]]) -> DecodedBatch:
        """Decode and transform ``(image id, path)`` items on the decode threads."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=self.decode_workers)
        start = time.perf_counter()
        decoded = self._decoder.map(self._decode_one, items)
        ids, tensors, failures = [], [], {}
        for (image_id, _), (tensor, reason) in zip(items, decoded, strict=True):
            if reason is not None:
                failures[image_id] = reason
            else:
                ids.append(image_id)
                tensors.append(tensor)
        return DecodedBatch(ids, tensors, failures, time.perf_counter() - start)

    def _decode_one(self, item: tuple[str, str]) -> tuple[torch.Tensor | None, str | None]:
        image_id, path = item
        return decode_for_view(
            path,
            self.transform,
            self.max_pixels,
            self.storage_options,
            image_id=image_id,
            target_size=self.decode_size,
        )

    def run(self, batch: DecodedBatch) -> BatchOutput:
        """The forward pass of a decoded batch."""
        features, span = self.forward(batch.ids, batch.tensors)
        return BatchOutput(batch.ids, features, batch.failures, span, batch.seconds)

    def extract(self, items: Sequence[tuple[str, str]]) -> BatchOutput:
        """Decode, transform and forward one batch of ``(image id, path)`` items."""
        return self.run(self.decode(items))

    def forward(
        self, ids: Sequence[str], tensors: Sequence[torch.Tensor]
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """Features of transformed images, float32 [len(ids), dim], and the forward's
        (start, end) epoch seconds."""
        with self.forward_lock:
            self._maybe_die()
            start = time.time()
            features = self.encode_tensors(tensors)
            if self.hooks.batch_delay_s:
                time.sleep(self.hooks.batch_delay_s)
            self.n_batches += 1
            span = (start, time.time())
        self._log_forward(ids)
        return features, span

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.shutdown(wait=False)
            self._decoder = None

    def _maybe_die(self) -> None:
        kill_after = self.hooks.kill_after_batches
        if kill_after is None or self.n_batches < kill_after:
            return
        try:
            fd = os.open(self.hooks.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # already died once for this view
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    def _log_forward(self, ids: Sequence[str]) -> None:
        # One file per forward pass (node, process, ids), so a test can count forward passes
        # across nodes and processes that have since died.
        if self.hooks.forward_log is None or not ids:
            return
        folder = Path(self.hooks.forward_log)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"node_id": current_node_id(), "pid": os.getpid(), "ids": list(ids)}
        name = f"{os.getpid()}-{self.n_batches}-{time.time_ns()}.json"
        (folder / name).write_text(json.dumps(record))
