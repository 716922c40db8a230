"""The optimization loop on objectives with closed-form losses."""

import pytest
import torch

from conftest import sections
from nstexp.optim.engine import optimize
from nstexp.losses.terms import LossTerms
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


def test_losses_read_every_few_steps_still_catch_divergence_and_keep_the_last_good_image():
    # Adam walks the pixels from 0 towards 2; past 0.95 the loss is inf (step 5 or so).
    image = torch.zeros(1, 3, 2, 2)
    every, late = [], []
    a = optimize(image, _quadratic(2.0, 0.95), AdamConfig(lr=0.1), steps=20, clamp="at_end", on_step=every.append)
    b = optimize(image, _quadratic(2.0, 0.95), AdamConfig(lr=0.1), steps=20, clamp="at_end", on_step=late.append,
                 check_every=4)
    assert a.status == b.status == "diverged"
    assert a.steps == b.steps and torch.equal(a.image, b.image)
    assert [e.step for e in every] == [e.step for e in late] == list(range(a.steps + 1))
    assert a.image.max().item() <= 0.95


def _tiny_style_objective():
    from nstexp.network.backbone import FeatureExtractor
    from nstexp.losses.objective import Objective

    torch.manual_seed(0)
    extractor = FeatureExtractor("vgg19", "caffe", ["relu1_1", "relu2_1"])
    content, style = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24) ** 3
    return Objective(extractor, content, [style], *sections({"relu2_1": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0},
                                                         1.0, 1e3, 0.0)), content


def test_the_default_lbfgs_follows_torchs_lbfgs_with_the_clamp_correction(monkeypatch):
    from nstexp.optim import optimizers
    from nstexp.config import LBFGSConfig

    objective, content = _tiny_style_objective()
    ours, theirs = [], []
    optimize(content, objective, LBFGSConfig(history_size=4), steps=12, on_step=ours.append)
    monkeypatch.setattr(optimizers, "uses_batched_lbfgs", lambda cfg: False)  # torch.optim.LBFGS instead
    optimize(content, objective, LBFGSConfig(history_size=4), steps=12, on_step=theirs.append)
    assert ours[-1].terms.total.item() < 0.5 * ours[0].terms.total.item()  # it optimizes, and clamps bite:
    assert (ours[-1].image == 0).any() or (ours[-1].image == 1).any()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.image, b.image, atol=1e-4), a.step
        assert a.terms.total.item() == pytest.approx(b.terms.total.item(), rel=1e-3)


def _quadratic_per_sample(targets, blow_up_above):
    """Sample b: sum (x_b - targets[b])^2, infinite once one of its pixels exceeds blow_up_above[b]."""
    targets = torch.tensor(targets).view(-1, 1, 1, 1)
    limits = torch.tensor(blow_up_above)

    def objective(x: torch.Tensor) -> LossTerms:
        loss = (x - targets).pow(2).flatten(1).sum(1)
        loss = loss + torch.where(x.detach().flatten(1).amax(1) > limits, float("inf"), 0.0)  # no gradient
        zero = torch.zeros_like(loss)
        return LossTerms(loss, zero, loss, zero, {}, {"x": loss})

    return objective


@pytest.mark.parametrize("name", ["adam", "lbfgs"])
def test_samples_with_their_own_settings_follow_their_own_runs(name):
    from nstexp.config import LBFGSConfig

    objective, content = _tiny_style_objective()
    starts = torch.stack([content[0], content[0].flip(-1)])
    cfgs = ([AdamConfig(lr=0.02), AdamConfig(lr=0.05, betas=[0.8, 0.99])] if name == "adam"
            else [LBFGSConfig(lr=1.0), LBFGSConfig(lr=0.5)])
    together = optimize(starts, objective, cfgs, steps=6)
    for b in range(2):
        alone = optimize(starts[b:b + 1], objective, cfgs[b], steps=6)
        assert together.statuses[b] == "completed"
        assert torch.allclose(together.image[b], alone.image[0], atol=1e-5), b
        assert together.sample_terms[b].total.item() == pytest.approx(alone.terms.total.item(), rel=1e-4)
    assert not torch.allclose(together.image[0], together.image[1].flip(-1), atol=1e-3)  # settings mattered


@pytest.mark.parametrize("name", ["adam", "lbfgs"])
def test_a_sample_that_diverges_stops_alone(name):
    from nstexp.config import LBFGSConfig

    # Both walk from 0 towards 0.9; the second's loss becomes inf past 0.5.
    objective = _quadratic_per_sample([0.9, 0.9], [10.0, 0.5])
    cfg = AdamConfig(lr=0.1) if name == "adam" else LBFGSConfig(lr=0.3, normalize_loss=False)
    events = []
    result = optimize(torch.zeros(2, 3, 2, 2), objective, cfg, steps=30, on_step=events.append, check_every=4)
    assert result.statuses == ["completed", "diverged"]
    assert result.sample_steps[0] == 30 and 0 < result.sample_steps[1] < 30
    assert result.image[0].min().item() > 0.85  # the first one went on to its target
    assert result.image[1].max().item() <= 0.5  # the second kept its last good image
    assert result.sample_terms[1].total.isfinite().all()
    assert events[-1].active == (True, False) and events[0].active == (True, True)
