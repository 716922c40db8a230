"""Reading and writing clips: a video file through PyAV (FFmpeg inside its wheel), a folder of
frames, or a bundled sample clip (`sample:pan`, `sample:shake`: nstexp.video.sample).

Which frames: those from `start` to `end` seconds, at `fps` frames a second (fewer than the
clip's: the first frame of each 1/fps interval; None or more: every frame), at most `frames` of them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from PIL import Image

from nstexp import images
from nstexp.errors import NstexpError

# A folder of frames has no frame rate: `video.fps` gives it, else this.
FOLDER_FPS = 24.0
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SAMPLES = ("pan", "shake")  # nstexp.video.sample's clips (its NAMES: this module imports no torch)
ALLOWED = "a video file FFmpeg decodes, a folder of image files, sample:pan or sample:shake"


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB
    fps: float  # of `frames`: the source's, or the rate chosen


def _select(timed, fps: float | None, start: float, end: float | None, frames: int | None):
    """The items kept of `timed`, (seconds, item) pairs in order, read lazily (a long clip is decoded
    only as far as needed)."""
    last, kept = None, 0
    for i, (t, item) in enumerate(timed):
        if (end is not None and t >= end) or (frames is not None and kept >= frames):
            return
        if t < start - 1e-6:
            continue
        slot = math.floor((t - start) * fps + 1e-6) if fps else i
        if slot != last:
            last, kept = slot, kept + 1
            yield item


def read(spec: str, key: str = "content.video", fps: float | None = None, start: float = 0.0,
         end: float | None = None, frames: int | None = None,
         resize: Callable[[Image.Image], Image.Image] = lambda im: im) -> Clip:
    """The frames chosen, each through `resize`; refuses what it cannot decode in one line."""
    if spec.startswith(images.SAMPLE_PREFIX) and spec[len(images.SAMPLE_PREFIX):] in SAMPLES:
        from nstexp.video import sample

        clip = sample.clip(spec[len(images.SAMPLE_PREFIX):])
        timed = ((i / clip.fps, f) for i, f in enumerate(clip.frames))
        shots = [resize(images.to_pil(f)) for f in _select(timed, fps, start, end, frames)]
        return _chosen(Clip(shots, min(fps, clip.fps) if fps else clip.fps), spec, key)
    if spec.startswith(images.SAMPLE_PREFIX):
        raise NstexpError(f"{key}={spec}: no such sample clip (allowed: {ALLOWED})")
    if not os.path.exists(spec):
        raise NstexpError(f"{key}={spec}: file not found (allowed: {ALLOWED})")
    if os.path.isdir(spec):
        return _folder(spec, key, fps, start, end, frames, resize)
    return _chosen(_decode(spec, key, fps, start, end, frames, resize), spec, key)


def _chosen(clip: Clip, spec: str, key: str) -> Clip:
    if not clip.frames:
        raise NstexpError(f"{key}={spec}: no frame between the start and the end chosen (video.start, video.end)")
    return clip


def _folder(spec, key, fps, start, end, frames, resize) -> Clip:
    names = sorted(n for n in os.listdir(spec) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise NstexpError(f"{key}={spec}: the folder holds no image files ({', '.join(FRAME_EXTENSIONS)})")
    rate = fps or FOLDER_FPS
    kept = _select(((i / rate, n) for i, n in enumerate(names)), None, start, end, frames)
    shots = [resize(images.load_image(os.path.join(spec, n), key)) for n in kept]
    return _chosen(Clip(shots, rate), spec, key)


def _decode(path, key, fps, start, end, frames, resize) -> Clip:
    import av  # here: the command's start and its refusals need no FFmpeg

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise NstexpError(f"{key}={path}: has no video stream (allowed: {ALLOWED})")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or FOLDER_FPS)

            def timed():  # seconds from the first frame (a stream may start later than 0)
                first = None
                for i, f in enumerate(container.decode(stream)):
                    t = f.time if f.time is not None else i / rate
                    first = t if first is None else first
                    yield t - first, f

            shots = [resize(f.to_image()) for f in _select(timed(), fps, start, end, frames)]
    except NstexpError:
        raise
    except Exception as exc:  # FFmpeg's errors: not a video, truncated, an unknown codec
        raise NstexpError(f"{key}={path}: cannot be decoded as a video ({type(exc).__name__}: {exc}) "
                          f"(allowed: {ALLOWED})") from None
    return Clip(shots, min(fps, rate) if fps else rate)


def write(frames: list[Image.Image], fps: float, path: str) -> None:
    """An H.264 mp4 (yuv420p, which players expect: odd sides lose their last row or column)."""
    import av

    w, h = frames[0].size
    w, h = w - w % 2, h - h % 2
    tmp = f"{path}.tmp.mp4"
    with av.open(tmp, "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for im in frames:
            frame = av.VideoFrame.from_image(im.crop((0, 0, w, h)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)  # never half-written
