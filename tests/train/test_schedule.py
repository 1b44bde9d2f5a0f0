import math

import pytest
import torch

from rayclust.train.schedule import LRFactor, build_scheduler


def test_constant_with_linear_warmup():
    factor = LRFactor("constant", total_steps=10, warmup_steps=3)
    assert [factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_multistep_multiplies_by_gamma_at_each_milestone():
    factor = LRFactor("multistep", total_steps=30, milestones=[20, 10], gamma=0.5)
    assert [factor(s) for s in (0, 9, 10, 19, 20, 29)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_cosine_runs_from_one_to_min_factor():
    factor = LRFactor("cosine", total_steps=11, min_factor=0.1)
    assert factor(0) == pytest.approx(1.0)
    assert factor(5) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert factor(10) == pytest.approx(0.1)
    values = [factor(s) for s in range(11)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_state_round_trips_the_curve():
    def make():
        params = [torch.nn.Parameter(torch.zeros(1))]
        optimizer = torch.optim.SGD(params, lr=0.2)
        return optimizer, build_scheduler(optimizer, LRFactor("cosine", total_steps=8))

    optimizer, scheduler = make()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()
    lr_now = optimizer.param_groups[0]["lr"]
    assert lr_now == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))

    optimizer2, scheduler2 = make()
    optimizer2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(lr_now)
    optimizer.step(), scheduler.step(), optimizer2.step(), scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "step"}, r"schedule='step' is not one of 'constant', 'multistep', 'cosine'"),
        ({"total_steps": 0}, r"total_steps=0 should be >= 1"),
        ({"warmup_steps": 10}, r"warmup_steps=10 should be >= 0 and < total_steps=10"),
    ],
)
def test_invalid_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRFactor(**({"schedule": "cosine", "total_steps": 10} | kwargs))
