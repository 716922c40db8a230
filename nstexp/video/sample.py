"""The sample clips the project makes itself, with their exact flow and occlusions.

- `sample:pan`: a camera window pans and slowly zooms over the bundled photo `sample:chelsea`
  (CC0), and a disc cut from `sample:coffee` (CC0) crosses the frame the other way, in front.
- `sample:shake`: a hand-held camera over `sample:tubingen` (Andreas Praefcke, CC BY 3.0): a
  slow pan with a wobble of position, rotation and zoom, and no occluder.

Everything is a known map of the frame's pixels, so the flow between two frames and which pixels
stay visible are exact, not estimated: the tests check the estimated flow, the warping and the
reliability weights against them. Frame t shows the photo's point P = A_t p + o_t at its pixel p
(A_t: a rotation times a zoom, in photo pixels per frame pixel; o_t: where the frame's corner
is), and inside the disc of centre d_t and radius r the coffee photo's point k (p − d_t) + q (the
disc's texture moves with it). So a background pixel p of frame t is at
A_t'⁻¹ (A_t p + o_t − o_t') in frame t', and a disc pixel at p + d_t' − d_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nstexp import images

NAMES = ("pan", "shake")
FRAMES, FPS = 24, 12.0
SIZE = {"pan": (256, 176), "shake": (256, 192)}  # (width, height) the motion below is given at; others scale it


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


def _camera(name: str, t: int, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t (2 × 2) and o_t (x, y) in photo pixels, `unit` photo pixels per frame pixel at SIZE."""
    if name == "pan":  # right and down, 3 and 1.2 photo px a frame, zooming in 0.4 % a frame
        scale, angle = 1.2 * unit * (1 - 0.004 * t), 0.0
        corner = [20.0 + 3.0 * t, 30.0 + 1.2 * t]
    else:  # a slow pan right, with a wobble of about 3 px, 1.1 degrees and 1 %
        scale, angle = 1.4 * unit * (1 + 0.01 * math.sin(0.5 * t)), 0.02 * math.sin(2 * math.pi * t / 12)
        corner = [60.0 + 2.0 * t + 3.0 * math.sin(1.3 * t), 50.0 + 3.0 * math.cos(0.9 * t)]
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]]) * scale, torch.tensor(corner)


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


def _in_disc(name: str, t: int, x: torch.Tensor, y: torch.Tensor, w: int, h: int) -> torch.Tensor:
    if name != "pan":
        return torch.zeros_like(x, dtype=torch.bool)
    d, r = _disc(t, w, h)
    return (x - d[0]) ** 2 + (y - d[1]) ** 2 <= r * r


def _affine(a: torch.Tensor, o: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (x, y) + o."""
    return a[0, 0] * x + a[0, 1] * y + o[0], a[1, 0] * x + a[1, 1] * y + o[1]


def _photo_point(name: str, t: int, x: torch.Tensor, y: torch.Tensor, unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _affine(*_camera(name, t, unit), x, y)


def _frame(name: str, t: int, w: int, h: int, photo: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    xs, ys = _grid(w, h)
    background = _sample(photo, *_photo_point(name, t, xs, ys, SIZE[name][0] / w))
    if name != "pan":
        return background
    d, _ = _disc(t, w, h)
    k = 1.3 * SIZE[name][0] / w  # texture pixels per frame pixel
    disc = _sample(texture, k * (xs - d[0]) + 300, k * (ys - d[1]) + 200)
    return torch.where(_in_disc(name, t, xs, ys, w, h), disc, background)


def _flow(name: str, t: int, later: int, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact flow from frame t to frame `later` on t's pixels, and which of them are seen there."""
    unit = SIZE[name][0] / w
    xs, ys = _grid(w, h)
    px, py = _photo_point(name, t, xs, ys, unit)
    a, o = _camera(name, later, unit)
    inverse = torch.linalg.inv(a)
    bx, by = _affine(inverse, -inverse @ o, px, py)  # A_t'⁻¹ (P − o_t')
    in_disc = _in_disc(name, t, xs, ys, w, h)
    move = _disc(later, w, h)[0] - _disc(t, w, h)[0]
    qx, qy = torch.where(in_disc, xs + move[0], bx), torch.where(in_disc, ys + move[1], by)
    inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
    seen = inside & (in_disc | ~_in_disc(name, later, qx, qy, w, h))
    return torch.stack([qx - xs, qy - ys])[None], seen[None, None].float()


def clip(name: str = "pan", frames: int = FRAMES, size: tuple[int, int] | None = None) -> SampleClip:
    """Sample clip `name` at `size` (width, height; None: its own), `frames` frames long (at most
    FRAMES: the camera then reaches the photo's edge)."""
    w, h = size or SIZE[name]
    photo = images.to_tensor(images.load_image("sample:chelsea" if name == "pan" else "sample:tubingen"))
    texture = images.to_tensor(images.load_image("sample:coffee"))
    shots = [_frame(name, t, w, h, photo, texture) for t in range(frames)]
    fw = [_flow(name, t, t + 1, w, h) for t in range(frames - 1)]
    bw = [_flow(name, t + 1, t, w, h) for t in range(frames - 1)]
    return SampleClip(shots, [f for f, _ in fw], [f for f, _ in bw], [v for _, v in fw], [v for _, v in bw], FPS)
