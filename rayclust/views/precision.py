"""The forward pass's precision and memory layout: the one place that decides them.

``extraction.precision`` is ``auto`` by default; :func:`resolve_precision` turns it into the
precision the views run at, which is then part of each view's cache key (``ViewSpec.precision``),
so features of one precision are never mixed with another's:

- CUDA: ``fp16`` autocast (every CUDA GPU torch supports has fp16 arithmetic; tensor cores
  from Volta on);
- a CPU with native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in its flags):
  ``bf16`` autocast. Measured on a shared 2-core AMD EPYC with AVX512-BF16,
  tf_efficientnet_lite0, batch 32, paired runs: channels_last fp32 ~1.7x the NCHW fp32
  forward, bf16 a further ~1.3x; features at cosine >= 0.9995 of fp32 on the shipped
  sample (``benchmarks/RESULTS.md``);
- any other CPU: ``fp32`` (bf16 without native instructions is emulated).

Under bf16 / fp16 the stem and first two blocks of EfficientNet-like models stay fp32
(:func:`keep_leading_layers_fp32`): that is what keeps the features within cosine 0.999.

Every precision runs channels_last (NHWC): faster on CPUs (oneDNN) and on tensor cores, the
same features. ``torch.compile`` is left off: its compilation would land on every cold
run (a new process), and it was not shown to pay back on the CPUs measured here.

Which device: the Ray engines decide in the driver from the resources their workers declare
(a worker on another node with another CPU still runs the precision of the key, correct if
slower); the local engine from this process's device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rayclust.views.spec import PRECISIONS

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this machine's CPU flags list native bf16 arithmetic (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto`` -> the fastest precision with features at cosine >= 0.999 of fp32 on
    ``device_type`` ("cpu" or "cuda"); a pinned precision is returned as it is."""
    if requested == "auto":
        if device_type == "cuda":
            chosen = "fp16"
        elif device_type == "cpu" and cpu_has_native_bf16():
            chosen = "bf16"
        else:
            chosen = "fp32"
        log.debug("extraction precision: auto -> %s on %s", chosen, device_type)
        return chosen
    if requested not in PRECISIONS:
        raise ValueError(
            f"precision={requested!r} should be auto or one of {', '.join(PRECISIONS)}"
        )
    return requested


# Leading modules of timm's EfficientNet / MobileNet family kept in fp32 under autocast: the
# bf16 rounding of the input and of the high-resolution early activations is what moves the
# features most. With them in fp32, lite0 features on 64 images of the shipped sample went
# from cosine >= 0.9958 to >= 0.9996 of fp32 (lite1, lite2: >= 0.9997, >= 0.9998), with no
# speed loss measurable in paired runs on the noisy 2-core machine.
FP32_LEADING_BLOCKS = 2


def _fp32_forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    device_type = next(
        (a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu"
    )  # fmt: skip
    args = tuple(
        a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )
    with torch.autocast(device_type, enabled=False):
        return forward(*args, **kwargs)


def keep_leading_layers_fp32(model: torch.nn.Module) -> list[str]:
    """Make the stem and first blocks of an EfficientNet-like model run in fp32 even under
    autocast; returns the names of the modules changed (none for other architectures)."""
    # a pooling wrapper (rayclust.views.pooling) holds the network as .backbone
    model = getattr(model, "backbone", model)
    if not (hasattr(model, "conv_stem") and hasattr(model, "blocks")):
        return []
    names = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(FP32_LEADING_BLOCKS)]
    changed = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        module.forward = functools.partial(_fp32_forward, module.forward)
        changed.append(name)
    return changed


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a forward pass at ``precision`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
