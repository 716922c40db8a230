"""Clips in and out: an mp4 written and read back through PyAV, a folder of frames, which frames
the start, end, rate and count choose, and one-line refusals of what cannot be decoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nstexp.errors import NstexpError
from nstexp.video import io


def _frames(n: int, size=(32, 24)) -> list[Image.Image]:
    """Frames whose mean grey level counts up: frame i is 40 + 20 i."""
    return [Image.new("RGB", size, (40 + 20 * i,) * 3) for i in range(n)]


def _level(im: Image.Image) -> float:
    return float(np.asarray(im, dtype=np.float64).mean())


def test_mp4_round_trip_keeps_frames_rate_and_order(tmp_path):
    path = str(tmp_path / "clip.mp4")
    io.write(_frames(6), 12.0, path)
    clip = io.read(path)
    assert clip.fps == pytest.approx(12.0)
    assert len(clip.frames) == 6 and clip.frames[0].size == (32, 24)
    assert [_level(f) for f in clip.frames] == pytest.approx([40 + 20 * i for i in range(6)], abs=2)


def test_start_end_rate_and_count_choose_the_frames(tmp_path):
    path = str(tmp_path / "clip.mp4")
    io.write(_frames(8), 10.0, path)  # frame i at i / 10 s
    levels = lambda clip: [round((_level(f) - 40) / 20) for f in clip.frames]  # noqa: E731
    assert levels(io.read(path, start=0.2, end=0.5)) == [2, 3, 4]
    half = io.read(path, fps=5.0)  # the first frame of each 0.2 s
    assert levels(half) == [0, 2, 4, 6] and half.fps == 5.0
    assert levels(io.read(path, frames=3, start=0.1)) == [1, 2, 3]
    assert io.read(path, fps=30.0).fps == pytest.approx(10.0)  # no more frames than the clip has


def test_a_folder_of_frames_in_name_order(tmp_path):
    for i, im in enumerate(_frames(4)):
        im.save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = io.read(str(tmp_path), frames=3)
    assert [_level(f) for f in clip.frames] == [40, 60, 80]
    assert clip.fps == io.FOLDER_FPS and io.read(str(tmp_path), fps=8.0).fps == 8.0


def test_the_sample_clip_and_resizing():
    clip = io.read("sample:pan", frames=3, resize=lambda im: im.resize((64, 44)))
    assert len(clip.frames) == 3 and clip.frames[0].size == (64, 44) and clip.fps == 12.0


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_text("not a video"), "cannot be decoded as a video"),
    (lambda p: p.write_bytes(b""), "cannot be decoded as a video"),
    (lambda p: None, "file not found"),
    (lambda p: p.mkdir(), "holds no image files"),
])
def test_refused_in_one_line(tmp_path, make, says):
    path = tmp_path / "clip.mp4"
    make(path)
    with pytest.raises(NstexpError, match=says) as exc:
        io.read(str(path))
    assert "\n" not in str(exc.value)


def test_nothing_between_start_and_end_is_refused(tmp_path):
    path = str(tmp_path / "clip.mp4")
    io.write(_frames(3), 10.0, path)
    with pytest.raises(NstexpError, match="no frame between"):
        io.read(path, start=5.0)
    with pytest.raises(NstexpError, match="no such sample clip"):
        io.read("sample:chelsea")
