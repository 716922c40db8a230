"""The optimization loop on objectives with closed-form losses."""

import torch

from nstexp.engine import optimize
from nstexp.objective import LossTerms
from nstexp.config import AdamConfig


def _quadratic(target: float, blow_up_above: float):
    """Loss sum (x - target)^2, infinite once a pixel exceeds `blow_up_above`."""

    def objective(x: torch.Tensor) -> LossTerms:
        loss = (x - target).pow(2).flatten(1).sum(1)
        if x.detach().max() > blow_up_above:
            loss = loss * float("inf")
        zero = torch.zeros_like(loss)
        return LossTerms(loss, zero, loss, zero, {}, {"x": loss})

    return objective


def test_clamp_at_end_reports_the_losses_of_the_clamped_image_after_divergence():
    # Adam walks the pixels from 0 towards 2 in steps of about lr; past 2.6 the loss is inf.
    image = torch.zeros(1, 3, 2, 2)
    result = optimize(image, _quadratic(2.0, 2.6), AdamConfig(lr=0.5), steps=20, clamp="at_end")
    assert result.status == "diverged"
    assert result.image.max().item() == 1.0  # the last good image went past 1, and is clamped
    # The reported losses are those of the returned image: (1 - 2)^2 per value.
    assert result.terms.total.item() == image.numel() * 1.0


def test_step_times_are_taken_when_the_image_exists_and_every_evaluation_counts():
    events = []
    image = torch.zeros(1, 3, 2, 2)
    result = optimize(image, _quadratic(0.5, 10.0), AdamConfig(lr=0.1), steps=3, on_step=events.append)
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert events[0].time_s == 0.0
    assert all(a.time_s < b.time_s for a, b in zip(events, events[1:]))
    assert [e.evals for e in events] == [0, 1, 2, 3]  # evaluations spent to make each image
    assert result.evals == 4  # ... plus the final measurement of the last image
    assert result.terms.total.item() == events[-1].terms.total.item()
