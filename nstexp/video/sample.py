"""`sample:pan`, a clip the project makes itself, with its exact flow and occlusions.

A camera window pans and slowly zooms over the bundled photo `sample:chelsea` (CC0), and a disc
cut from `sample:coffee` (CC0) crosses the frame the other way, in front of it. Everything is a
known map of the frame's pixels, so the flow between consecutive frames and which pixels stay
visible are exact, not estimated: the tests check the estimated flow, the warping and the
reliability weights against them.

Frame t shows the photo's point P = s_t p + o_t at its pixel p (s_t photo pixels per frame
pixel, o_t the window's corner), and inside the disc of centre d_t and radius r the coffee
photo's point k (p − d_t) + q (the disc's texture moves with it). So a background pixel p of
frame t is at q = (s_t p + o_t − o_t+1) / s_t+1 in frame t + 1, and a disc pixel at p + d_t+1 − d_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nstexp import images

NAME = "pan"
FRAMES, FPS = 24, 12.0
SIZE = (256, 176)  # (width, height) at which the motion below is given; other sizes scale it


@dataclass
class SampleClip:
    """The frames (1, 3, H, W) and, for each consecutive pair t, t + 1, the exact flows (1, 2, H, W)
    and visibility (1, 1, H, W; 1: the pixel is seen in the other frame, in front and inside it)."""

    frames: list[torch.Tensor]
    forward: list[torch.Tensor]  # t -> t + 1, on frame t's pixels
    backward: list[torch.Tensor]  # t + 1 -> t, on frame t + 1's pixels
    visible_forward: list[torch.Tensor]  # frame t's pixels seen in frame t + 1
    visible_backward: list[torch.Tensor]  # frame t + 1's pixels seen in frame t
    fps: float


def _camera(t: int, unit: float) -> tuple[float, torch.Tensor]:
    """s_t and o_t (x, y): a pan right and down, 3 and 1.2 photo px a frame at 256 px, zooming in 0.4 % a frame."""
    s = 1.2 * unit * (1 - 0.004 * t)
    return s, torch.tensor([20.0 + 3.0 * t, 30.0 + 1.2 * t])


def _disc(t: int, w: int, h: int) -> tuple[torch.Tensor, float]:
    """d_t (x, y) and r in frame pixels: from the left edge to the right, 3.5 % of the width a frame."""
    return torch.tensor([w * (0.1 + 0.035 * t), h * (0.35 + 0.01 * t)]), 0.16 * w


def _sample(photo: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """photo (1, 3, Hp, Wp) at the points (x, y) (H, W) in its pixels, bilinear."""
    hp, wp = photo.shape[-2:]
    grid = torch.stack([2 * x / (wp - 1) - 1, 2 * y / (hp - 1) - 1], dim=-1)[None]
    return F.grid_sample(photo, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _grid(w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


def _in_disc(t: int, x: torch.Tensor, y: torch.Tensor, w: int, h: int) -> torch.Tensor:
    d, r = _disc(t, w, h)
    return (x - d[0]) ** 2 + (y - d[1]) ** 2 <= r * r


def _inside(x: torch.Tensor, y: torch.Tensor, w: int, h: int) -> torch.Tensor:
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def _frame(t: int, w: int, h: int, photo: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    s, o = _camera(t, SIZE[0] / w)
    xs, ys = _grid(w, h)
    background = _sample(photo, s * xs + o[0], s * ys + o[1])
    d, _ = _disc(t, w, h)
    k = 1.3 * SIZE[0] / w  # texture pixels per frame pixel
    disc = _sample(texture, k * (xs - d[0]) + 300, k * (ys - d[1]) + 200)
    return torch.where(_in_disc(t, xs, ys, w, h), disc, background)


def _flow(t: int, later: int, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact flow from frame t to frame `later` on t's pixels, and which of them are seen there."""
    unit = SIZE[0] / w
    (s0, o0), (s1, o1) = _camera(t, unit), _camera(later, unit)
    xs, ys = _grid(w, h)
    in_disc = _in_disc(t, xs, ys, w, h)
    move = _disc(later, w, h)[0] - _disc(t, w, h)[0]
    qx = torch.where(in_disc, xs + move[0], (s0 * xs + o0[0] - o1[0]) / s1)
    qy = torch.where(in_disc, ys + move[1], (s0 * ys + o0[1] - o1[1]) / s1)
    seen = _inside(qx, qy, w, h) & (in_disc | ~_in_disc(later, qx, qy, w, h))
    return torch.stack([qx - xs, qy - ys])[None], seen[None, None].float()


def pan(frames: int = FRAMES, size: tuple[int, int] = SIZE) -> SampleClip:
    """The clip at `size` (width, height), `frames` frames long (at most FRAMES: the window then
    reaches the photo's edge)."""
    w, h = size
    photo = images.to_tensor(images.load_image("sample:chelsea"))
    texture = images.to_tensor(images.load_image("sample:coffee"))
    shots = [_frame(t, w, h, photo, texture) for t in range(frames)]
    fw = [_flow(t, t + 1, w, h) for t in range(frames - 1)]
    bw = [_flow(t + 1, t, w, h) for t in range(frames - 1)]
    return SampleClip(shots, [f for f, _ in fw], [f for f, _ in bw], [v for _, v in fw], [v for _, v in bw], FPS)
