"""The optimization loop on objectives with closed-form losses."""

import pytest
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


def test_ema_reports_the_bias_corrected_average_of_the_iterates():
    image = torch.zeros(1, 3, 2, 2)
    plain, averaged = [], []
    optimize(image, _quadratic(0.8, 10.0), AdamConfig(lr=0.1), steps=5, on_step=plain.append)
    result = optimize(image, _quadratic(0.8, 10.0), AdamConfig(lr=0.1, ema=0.9), steps=5,
                      on_step=averaged.append)
    iterates = [e.image for e in plain]  # the same trajectory: averaging does not steer Adam
    for k, event in enumerate(averaged):
        weights = [0.1 * 0.9 ** (k - i) for i in range(k + 1)]
        expected = sum(w * x for w, x in zip(weights, iterates)) / sum(weights)  # = / (1 - 0.9^(k+1))
        assert torch.allclose(event.image, expected, atol=1e-6), k
        if k < 5:  # the iterate's losses, from the optimizer's own evaluations
            assert event.terms.total.item() == plain[k].terms.total.item()
    assert torch.allclose(result.image, averaged[-1].image)
    assert result.terms.total.item() == averaged[-1].terms.total.item()  # the last step: measured itself
    # The final losses are the average's own: (x - 0.8)^2 summed over 12 values.
    assert result.terms.total.item() == pytest.approx(((result.image - 0.8) ** 2).sum().item(), rel=1e-6)
    assert result.evals == 6  # 5 steps and one measurement of the average
