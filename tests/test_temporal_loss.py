"""The temporal loss (Ruder et al. 2016, eq. 7) by hand, and how it enters the objective: as a
term on the pixels beside TV and the Laplacian term, whole or in tiles."""

from __future__ import annotations

import pytest
import torch

from conftest import sections
from nstexp.losses.objective import Objective
from nstexp.losses.temporal import TemporalTargets, temporal_loss
from nstexp.network.backbone import FeatureExtractor
from nstexp.tiling.objective import TiledObjective


def test_temporal_loss_by_hand():
    # 1 × 2 px, 3 channels: D = 6 values. Pixel 0 reliable, pixel 1 not.
    x = torch.tensor([[[[0.5, 1.0]], [[0.2, 0.0]], [[0.0, 0.3]]]])  # (1, 3, 1, 2)
    omega = torch.tensor([[[[0.3, 0.0]], [[0.2, 0.0]], [[0.4, 0.0]]]])
    c = torch.tensor([[[[1.0, 0.0]]]])
    # (0.2² + 0² + 0.4²) / 6 at pixel 0; pixel 1's differences (1, 0, 0.3) count 0.
    assert temporal_loss(x, omega, c).tolist() == pytest.approx([0.2 / 6])
    # A batch: each sample its own value against the same target.
    batch = torch.cat([x, omega])
    assert temporal_loss(batch, omega, c).tolist() == pytest.approx([0.2 / 6, 0.0])
    # Weighted, and summed over the earlier frames (long-term): 10 × (0.2 / 6 + 1.09 / 6).
    targets = TemporalTargets(10.0, [(omega, c), (omega, 1 - c)])
    assert targets(x).tolist() == pytest.approx([10 * (0.2 + 1.09) / 6])


def test_targets_at_a_coarser_level_are_area_averages():
    omega = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    c = torch.tensor([[[[1.0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1]]]])
    (w, half), = TemporalTargets(1.0, [(omega, c)]).at((2, 2)).pairs
    assert half[0, 0].tolist() == [[1.0, 0.25], [0.0, 1.0]]
    assert w[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", "caffe", ["relu2_1", "relu3_1", "relu4_2"])


def _objective(extractor, temporal=None):
    # Content and style weighted down to the temporal term's scale: their raw (Gatys) values are ~1e10.
    gen = torch.Generator().manual_seed(3)
    content, style = torch.rand(1, 3, 64, 96, generator=gen), torch.rand(1, 3, 64, 80, generator=gen)
    return Objective(extractor, content, [style], *sections({"relu4_2": 1.0}, {"relu2_1": 0.5, "relu3_1": 0.5},
                                                           1e-9, 1e-9, 1e-3), temporal=temporal)


def test_the_objective_adds_the_weighted_term(extractor):
    gen = torch.Generator().manual_seed(4)
    image, omega = torch.rand(2, 3, 64, 96, generator=gen), torch.rand(1, 3, 64, 96, generator=gen)
    c = (torch.rand(1, 1, 64, 96, generator=gen) > 0.3).float()
    plain, held = _objective(extractor), _objective(extractor, TemporalTargets(50.0, [(omega, c)]))
    with torch.no_grad():
        a, b = plain(image), held(image)
    expected = 50.0 * (c * (image - omega) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(b.temporal, expected) and torch.equal(a.temporal, torch.zeros(2))
    assert torch.allclose(b.total - a.total, expected, rtol=1e-5)
    assert b.as_floats(1)["loss/temporal"] == pytest.approx(expected[1].item(), rel=1e-6)
    # Weight 0: no term at all.
    assert _objective(extractor, TemporalTargets(0.0, [(omega, c)])).temporal is None


def test_a_tiled_objective_has_the_temporal_term_and_its_gradient(extractor):
    gen = torch.Generator().manual_seed(5)
    omega = torch.rand(1, 3, 64, 96, generator=gen)
    c = (torch.rand(1, 1, 64, 96, generator=gen) > 0.5).float()
    objective = _objective(extractor, TemporalTargets(1e4, [(omega, c)]))
    x = torch.rand(1, 3, 64, 96, generator=gen).requires_grad_(True)
    whole = objective(x)
    whole.total.sum().backward()
    expected, x.grad = x.grad.clone(), None
    tiled = TiledObjective([objective], 32)(x)
    tiled.total.sum().backward()
    assert torch.allclose(tiled.temporal, whole.temporal) and whole.temporal.item() > 0
    assert torch.allclose(tiled.total, whole.total, rtol=1e-5)
    assert torch.nn.functional.cosine_similarity(x.grad.flatten(), expected.flatten(), dim=0).item() > 0.99999
