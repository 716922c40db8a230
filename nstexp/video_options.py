"""The schema's section `video` (how a clip given as `content.video` is stylized) and its checks.
nstexp.config includes it; nstexp.validation calls `check`. The method: Ruder, Dosovitskiy & Brox,
"Artistic style transfer for videos" (GCPR 2016) and its long version (IJCV 2018); the run:
nstexp.run.video."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from nstexp.errors import ConfigError
from nstexp.loss_options import at_least, choice

# What each frame after the first starts from: the previous stylized frame warped along the flow
# (the paper's), the frame itself (each frame on its own), the previous stylized frame as it is.
VIDEO_INITS = ("warped", "content", "previous")


@dataclass
class TemporalConfig:
    # weight × (1/D) Σ_k c_k (x_k − ω_k)² over the pixels (RGB in [0, 1]), ω an earlier stylized frame
    # warped to this one, c where the flow is reliable; 0: no temporal loss.
    weight: float = 3e6
    # The earlier frames i − j, j in this list, each pixel is held to (the nearest where it is
    # reliable): [1] short-term only; the paper's long-term consistency uses [1, 2, 4].
    frames: List[int] = field(default_factory=lambda: [1])
    # With several passes: the temporal loss from this pass on (the paper's multi-pass: 8 of 15).
    from_pass: int = 1


@dataclass
class VideoConfig:
    init: str = "warped"
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    # Steps of each frame after the first, at `size` in one level (the warm start replaces coarse
    # to fine); None: `steps` (half of them kept the style on one sample clip, not on the other:
    # docs/video.md). The first frame (and every frame with init=content) runs as an image.
    steps: Optional[int] = None
    # What to take of the clip: at most `frames` frames, from `start` to `end` seconds, at `fps`
    # frames a second (fewer than the clip's; None: every frame; a folder of frames: its rate, 24 if None).
    frames: Optional[int] = None
    fps: Optional[float] = None
    start: float = 0.0
    end: Optional[float] = None
    # Passes over the clip in alternating directions (the paper's multi-pass algorithm: 15 passes of
    # 100 steps a frame, video.steps=100, the temporal loss from pass 8); 1: one pass, frame after frame.
    passes: int = 1
    # δ of the multi-pass blend, x' = δ c ω + (1 − δ c) x_old: how much of the neighbour just stylized,
    # warped to this frame, its start takes where the flow is reliable (the paper's: 0.5).
    blend: float = 0.5
    # Write each frame's flows (.npy) and reliability weights (.png) into diagnostics/.
    diagnostics: bool = False


def check(cfg) -> None:
    """Refuse bad `content.video` and `video.*` values in one line."""
    v = cfg.video
    choice("video.init", v.init, VIDEO_INITS)
    at_least("video.temporal.weight", v.temporal.weight, 0)
    frames = list(v.temporal.frames)
    if not frames or any(isinstance(j, bool) or not isinstance(j, int) or j < 1 for j in frames) \
            or len(set(frames)) != len(frames):
        raise ConfigError(f"video.temporal.frames={frames} must be distinct whole numbers >= 1, the earlier "
                          "frames i - j each frame is held to (e.g. [1] or the paper's [1,2,4])")
    at_least("video.temporal.from_pass", v.temporal.from_pass, 1)
    at_least("video.passes", v.passes, 1)
    if not 0 <= v.blend <= 1:
        raise ConfigError(f"video.blend={v.blend} must be in [0, 1] (the warped neighbour's share of a pass's start)")
    if v.steps is not None:
        at_least("video.steps", v.steps, 0)
    if v.frames is not None:
        at_least("video.frames", v.frames, 1)
    if v.fps is not None:
        at_least("video.fps", v.fps, 0, strict=True)
    at_least("video.start (seconds)", v.start, 0)
    if v.end is not None and v.end <= v.start:
        raise ConfigError(f"video.end={v.end} must be after video.start={v.start} (seconds)")
    video = cfg.content.video
    if video is not None and cfg.color.preserve in ("swap", "nnst"):
        raise ConfigError(f"content.video with color.preserve={cfg.color.preserve}: its colours are changed after "
                          "each frame's run, which the next frame cannot start from (with a video: none, luminance, "
                          "histogram)")
    if video is not None and not video.startswith("sample:") and not os.path.exists(video):
        raise ConfigError(f"content.video={video}: file not found (a video file, a folder of frames, or a sample clip)")
