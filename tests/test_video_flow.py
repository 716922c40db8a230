"""The video layer against ground truth: the sample clip's exact flow and visibility
(nstexp.video.sample), and hand-computed warps, weights and warping errors."""

from __future__ import annotations

import pytest
import torch

from nstexp.video import consistency, flow, reliability, sample, warp

PAIRS = (0, 11, 21)  # pairs (t, t + 1) of the clip checked: its start, middle and end


@pytest.fixture(scope="module")
def clip():
    return sample.clip("pan")


@pytest.fixture(scope="module")
def shake():
    return sample.clip("shake")


def _mean(values: torch.Tensor, where: torch.Tensor) -> float:
    return ((values * where).sum() / where.sum()).item()


def test_warp_by_whole_and_half_pixels():
    image = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)  # value 4y + x
    right = torch.zeros(1, 2, 3, 4)
    right[:, 0] = 1.0  # every pixel is seen one column to the right
    out = warp.warp(image, right)
    assert torch.equal(out[..., :3], image[..., 1:])
    assert torch.equal(out[..., 3], image[..., 3])  # beyond the last column: the border's value
    half = torch.zeros(1, 2, 3, 4)
    half[:, 1] = 0.5  # half a row down: the mean of two rows, 4y + x + 2
    assert torch.allclose(warp.warp(image, half)[..., :2, :], image[..., :2, :] + 2.0)
    assert warp.inside(right)[0, 0].tolist() == [[True, True, True, False]] * 3


def test_sample_clip_ground_truth_is_consistent(clip):
    # Bringing frame t + 1 back along the exact flow gives frame t wherever t's pixel is seen in
    # t + 1; only bilinear resampling (of the rendered frames and of the warp) is left.
    for t in PAIRS:
        seen = clip.visible_forward[t]
        back = warp.warp(clip.frames[t + 1], clip.forward[t])
        assert _mean((back - clip.frames[t]).abs().mean(1, keepdim=True), seen) < 0.012
        assert _mean((back - clip.frames[t]).abs().mean(1, keepdim=True), 1 - seen) > 0.05  # occluded: differ
        # The occluder covers part of the frame, and the pan uncovers a border: both kinds of pixel exist.
        assert 0.85 < seen.mean().item() < 0.99


def test_the_hand_held_clip_rotates_and_its_ground_truth_holds(shake):
    for t in PAIRS:
        seen = shake.visible_forward[t]
        def error(f):
            return _mean((warp.warp(shake.frames[t + 1], f) - shake.frames[t]).abs().mean(1, keepdim=True), seen)

        # The photo's fine detail makes resampling twice cost more than on the cat; standing still, 4x more.
        exact = error(shake.forward[t])
        assert exact < 0.02 and error(torch.zeros_like(shake.forward[t])) > 3 * exact
        assert seen.mean().item() > 0.9  # no occluder: only a border leaves the frame
    # Rotation: the flow's horizontal part changes down a column (a pan alone would keep it).
    u = shake.forward[PAIRS[1]][0, 0]
    assert (u[-1, 128] - u[0, 128]).abs() > 0.5


def test_dis_flow_against_ground_truth(clip, shake):
    for t in PAIRS:
        forward, backward = flow.both_ways(shake.frames[t], shake.frames[t + 1])
        assert _mean((forward - shake.forward[t]).norm(dim=1, keepdim=True), shake.visible_forward[t]) < 0.5
        forward, backward = flow.both_ways(clip.frames[t], clip.frames[t + 1])
        for estimate, exact, seen in ((forward, clip.forward[t], clip.visible_forward[t]),
                                      (backward, clip.backward[t], clip.visible_backward[t])):
            error = (estimate - exact).norm(dim=1, keepdim=True)  # end-point error, px
            assert _mean(error, seen) < 0.5  # a zero flow would be off by the motion, 1.7 px to 9 px
            assert _mean(exact.norm(dim=1, keepdim=True), seen) > 1.5


def test_medium_preset_is_the_most_accurate(clip):
    t = PAIRS[1]
    epe = {p: _mean((flow.flow(clip.frames[t], clip.frames[t + 1], p) - clip.forward[t]).norm(dim=1, keepdim=True),
                    clip.visible_forward[t]) for p in flow.PRESETS}
    assert epe["medium"] < epe["fast"] and epe["medium"] < epe["ultrafast"]


def test_reliability_from_exact_flows_finds_the_occlusions(clip):
    for t in PAIRS:
        # The weights of frame t + 1 for the temporal loss toward frame t.
        c = reliability.reliability(clip.backward[t], clip.forward[t])
        seen = clip.visible_backward[t]
        assert _mean(1 - c, 1 - seen) == 1.0  # every pixel not seen in frame t gets 0
        assert _mean(c, seen) > 0.98  # the others 1, but for the disc's motion boundary
        # What is left out of the seen pixels is the disc's edge: its motion boundary in frame t + 1,
        # and where bilinear sampling of the flow of frame t mixes the disc's and the background's.
        def near_edge(when, x, y):  # within 2 px of the disc's edge in frame `when`
            d, r = sample._disc(when, 256, 176)
            return (((x - d[0]) ** 2 + (y - d[1]) ** 2).sqrt() - r).abs() <= 2

        x, y = warp.positions(clip.backward[t])  # where frame t + 1's pixels are in frame t
        edge = near_edge(t + 1, *warp.positions(torch.zeros_like(clip.backward[t]))) | near_edge(t, x, y)
        assert ((1 - c) * seen * ~edge[:, None]).sum() == 0


def test_reliability_from_dis_flows(clip):
    for t in PAIRS:
        forward, backward = flow.both_ways(clip.frames[t], clip.frames[t + 1])
        c = reliability.reliability(backward, forward)
        seen = clip.visible_backward[t]
        assert _mean(1 - c, 1 - seen) > 0.85  # the occlusions found
        assert _mean(c, seen) > 0.9  # little of the rest thrown away


def test_reliability_by_hand():
    h, w = 8, 10
    out = torch.zeros(1, 2, h, w)
    out[:, 0] = 1.0  # this frame's pixels are one column to the right in the other
    back = torch.zeros(1, 2, h, w)
    back[:, 0] = -1.0  # and back
    c = reliability.reliability(out, back)
    assert c[0, 0, :, :-1].eq(1).all() and c[0, 0, :, -1].eq(0).all()  # the last column leaves the frame
    back[:, 0, :, 5] = 1.0  # |w̃ + ŵ|² = 4 > 0.01 (1 + 1) + 0.5 at the pixels that land on column 5
    c = reliability.reliability(out, back)
    assert c[0, 0, :, 4].eq(0).all() and c[0, 0, :, 3].eq(1).all()
    # A motion boundary: u jumps by 1 between columns 2 and 3; central differences give |∇u|² = 0.25
    # at columns 2 and 3 against 0.01 u² + 0.002 <= 0.012: 0 there, 1 elsewhere.
    step = torch.zeros(1, 2, h, w)
    step[:, 0, :, 3:] = 1.0
    assert reliability.motion_boundary(step)[0, 0, 0].tolist() == [c in (2, 3) for c in range(w)]


def test_long_term_weights_take_the_nearest_reliable_frame():
    c1 = torch.tensor([1.0, 0.0, 0.0, 1.0])  # i - 1
    c2 = torch.tensor([1.0, 1.0, 0.0, 0.0])  # i - 2
    c4 = torch.tensor([1.0, 1.0, 1.0, 0.0])  # i - 4
    out = reliability.long_term([c1, c2, c4])
    assert [o.tolist() for o in out] == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_warp_error_by_hand():
    frame = torch.zeros(1, 3, 2, 2)
    following = torch.zeros(1, 3, 2, 2)
    following[0, :, 0, 0] = 0.5  # ‖·‖² = 3 × 0.25 at pixel (0, 0)
    following[0, 0, 1, 1] = 1.0  # 1 at pixel (1, 1), which the mask leaves out
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    assert consistency.warp_error(frame, following, torch.zeros(1, 2, 2, 2), mask) == pytest.approx(0.75 / 3)
    # Nothing reliable: divided by every value, H W C = 12.
    assert consistency.warp_error(frame, following, torch.zeros(1, 2, 2, 2), 0 * mask) == 0.0


def test_warp_error_of_the_input_clip_is_small(clip):
    # The input frames themselves are consistent along their own flow; a shuffled pair is not.
    t = PAIRS[1]
    forward, backward = flow.both_ways(clip.frames[t], clip.frames[t + 1])
    mask = reliability.reliability(forward, backward)
    same = consistency.warp_error(clip.frames[t], clip.frames[t + 1], forward, mask)
    other = consistency.warp_error(clip.frames[t], clip.frames[PAIRS[2]], forward, mask)
    assert same < 0.003 < 10 * same < other


def test_the_multi_pass_blend_by_hand():
    old, warped = torch.full((1, 1, 1, 2), 0.2), torch.full((1, 1, 1, 2), 1.0)
    c = torch.tensor([[[[1.0, 0.0]]]])
    # Reliable: δ ω + (1 − δ) x_old = 0.5 + 0.1; unreliable: x_old.
    assert warp.blend(old, warped, c, 0.5).flatten().tolist() == pytest.approx([0.6, 0.2])
    assert warp.blend(old, warped, c, 1.0).flatten().tolist() == pytest.approx([1.0, 0.2])
