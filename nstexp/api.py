"""From Python: `nstexp.stylize` and `nstexp.evaluate`, thin layers over the command line's runner.

    import nstexp
    image, summary = nstexp.stylize("photo.jpg", "painting.jpg", size=256, steps=200,
                                    **{"optimizer": "adam", "style.weight": 1e6})
    nstexp.evaluate(image, "photo.jpg", "painting.jpg")["eval/style_sw"]

Overrides are the command line's keys (dotted keys through `**{...}`), composed and
validated by the same Hydra configs; a bad one raises NstexpError with the command line's
one-line message.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time

from PIL import Image

from nstexp import images
from nstexp.errors import NstexpError


def _spec(image, folder: str, name: str) -> str:
    """A path for an image given as a path, `sample:<name>` or a PIL image of any mode (saved to
    `folder` as the 8-bit RGB a file of it would be read as)."""
    if isinstance(image, Image.Image):
        path = os.path.join(folder, f"{name}.png")
        images.to_rgb(image).save(path)
        return path
    return os.fspath(image)


def _value(value) -> str:
    """A Python value written as a command-line override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[\w./:@+-]*", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's quoted string


def stylize(content, style, out_dir: str | None = None, **overrides) -> tuple[Image.Image, dict]:
    """Run one style transfer; returns (the result image, its summary: what summary.json holds).

    content, style: paths, `sample:<name>` or PIL images. out_dir: where the run's files go.
    Without it they go to a temporary folder, removed afterwards, unless the run has a W&B run
    (W&B is off unless `wandb.mode` is given): then the run is kept in a new folder under
    `outputs/` of the current directory, named in the summary's `out_dir`, so that an offline
    W&B run can still be uploaded with `wandb sync`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nstexp import composition
    from nstexp.run.runner import run
    from nstexp.run.wandb_mode import resolve_wandb_mode

    with tempfile.TemporaryDirectory() as tmp:
        args = {"content.image": _spec(content, tmp, "content"), "style.image": _spec(style, tmp, "style"),
                "wandb.mode": "disabled", "progress": False, **overrides}
        lines = [f"{k}={_value(v)}" for k, v in args.items()]
        swept, _ = composition.preflight(lines)  # composes and validates: one-line NstexpError
        if swept:
            raise NstexpError(f"stylize runs one job; these keys have several values: {', '.join(swept)}")
        if "content.video" in overrides:
            raise NstexpError("stylize makes one image; a video (content.video) runs with the nstexp command")
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=lines)
        finally:
            GlobalHydra.instance().clear()
        out = out_dir
        if out is None and resolve_wandb_mode(cfg.wandb.mode) != "disabled":
            # The W&B run lives in the run's folder: a temporary one would take it away.
            os.makedirs("outputs", exist_ok=True)
            out = tempfile.mkdtemp(prefix=time.strftime("stylize-%Y-%m-%d_%H-%M-%S-"), dir="outputs")
            print(f"stylize: the run (and its W&B run) is kept in {out}", file=sys.stderr)
        folder = out or os.path.join(tmp, "run")
        run(cfg, folder)
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)  # with what the tracker adds there: the W&B run's mode, id and url
        if out is not None:
            summary["out_dir"] = out
        final = os.path.join(folder, "final.png")
        image = Image.open(final).convert("RGB") if os.path.exists(final) else None
    return image, summary


def evaluate(result, content, style, size: int | None = None) -> dict[str, float]:
    """The `eval/...` metrics (nstexp.eval.metrics) of `result` against `content` and `style` (paths,
    `sample:<name>` or PIL images)."""
    from nstexp.eval import evaluation, rules

    with tempfile.TemporaryDirectory() as tmp:
        paths = [_spec(img, tmp, name) for img, name in ((result, "result"), (content, "content"), (style, "style"))]
        (row,) = evaluation.evaluate([paths[0]], paths[1], paths[2], size or rules.REFERENCE_SIZE)
    del row["image"]
    return row
