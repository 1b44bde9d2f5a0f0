"""Learning-rate schedules as a factor of the base rate, per optimizer step.

A schedule is a small picklable object (not a lambda) so that ``LambdaLR.state_dict()``
captures it and a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Schedule = Literal["constant", "multistep", "cosine"]
SCHEDULES: tuple[str, ...] = ("constant", "multistep", "cosine")


@dataclass
class LRFactor:
    """Factor applied to the base learning rate at optimizer step ``step``.

    - ``constant``: 1.
    - ``multistep``: ``gamma ** (number of milestones <= step)``.
    - ``cosine``: from 1 down to ``min_factor`` over the steps after warm-up.
    A linear warm-up from ``1 / (warmup_steps + 1)`` to 1 comes first when ``warmup_steps > 0``.
    """

    schedule: Schedule
    total_steps: int
    warmup_steps: int = 0
    milestones: Sequence[int] = field(default_factory=list)  # in optimizer steps
    gamma: float = 0.1
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule={self.schedule!r} is not one of {', '.join(map(repr, SCHEDULES))}"
            )
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} should be >= 1")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} should be >= 0 and < total_steps={self.total_steps}"
            )
        if not 0.0 <= self.min_factor <= 1.0:
            raise ValueError(f"min_factor={self.min_factor} should be in [0, 1]")
        self.milestones = sorted(int(m) for m in self.milestones)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "multistep":
            passed = sum(1 for milestone in self.milestones if milestone <= step)
            return self.gamma**passed
        span = max(self.total_steps - self.warmup_steps - 1, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, factor: LRFactor
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
