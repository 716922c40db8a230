"""The plots of `nstexp compare`: how the jobs of a sweep got where they did, and where they ended.

- loss_curves: total, content and style loss of every job against evals and wall time;
- eval_curves: the image-quality metrics (eval/style_sw, eval/ssim) of every job against evals
  and wall time, from the steps at which the image was evaluated: which job reaches a given
  style fidelity first;
- tradeoff: each job's final content fidelity (SSIM by default) against its final style
  distance (eval/style_sw by default), or any two metrics a user picks.

Figures render with Agg directly: no GUI backend, no global pyplot state.
"""

from __future__ import annotations

import math

from nstexp.eval import rules
from nstexp.sweep.results import Job

LOSSES = ("loss/total", "loss/content", "loss/style")
X_AXES = (("evals", "evals"), ("time_s", "wall time (s)"))


def axis_label(what: str, key: str) -> str:
    """`what: key (... is better)`, the way metric `key` ranks (rules.better); no claim for a key no rule covers."""
    rule = rules.better(key)
    return f"{what}: {key}" + (f" ({rule} is better)" if rule else "")


# (metric key, axis label): the axis says which way is better.
CONTENT_FIDELITY = ("eval/ssim", axis_label("content fidelity", "eval/ssim"))
STYLE_FIDELITY = ("eval/style_sw", axis_label("style distance", "eval/style_sw"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0


def swept_label(job: Job) -> str:
    """The job's swept values as the contact sheet labels it (`job N` if none), and its status unless completed."""
    values = ", ".join(f"{k}={v}" for k, v in job.swept.items()) or f"job {job.num}"
    return values + ("" if job.status == "completed" else f" ({job.status})")


def _legend_label(job: Job) -> str:
    return f"job {job.num}: {swept_label(job)}" if job.swept else swept_label(job)


def points(job: Job, x_key: str, key: str, keep=_finite) -> list[tuple[float, float]]:
    """(x, value) of `key` in every metrics.jsonl row of `job` that has both and whose value `keep` accepts."""
    return [(m[x_key], m[key]) for m in job.metrics if x_key in m and keep(m.get(key))]


def _figure(width: float, height: float, layout: str | None = "constrained"):
    # Imported here: matplotlib takes a while to import, and only drawing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _curves(jobs: list[Job], path: str, title: str, panels: tuple[tuple[str, str], ...], yscale: str) -> None:
    """Each job's `panels` (key, y label) against evals (top row) and wall time (bottom row), saved to `path`.

    Values the scale cannot show (0 or inf on a log scale) are left out. A job keeps its colour in every figure.
    """
    keep = _positive if yscale == "log" else _finite
    # A fixed grid rather than a layout engine or bbox_inches="tight", each of which draws the
    # figure again (most of the time a sweep's report takes): the plots take `plot_w` x `plot_h`
    # inches, and the figure grows by the legend's measured size, so long labels are kept whole.
    plot_w, plot_h = 5.0 * len(panels), 9.0
    fig = _figure(plot_w, plot_h, layout=None)
    axes = fig.subplots(len(X_AXES), len(panels), squeeze=False)
    for i, job in enumerate(j for j in jobs if j.metrics):
        style = {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4], "label": _legend_label(job)}
        for row, (x_key, _) in enumerate(X_AXES):
            for col, (key, _) in enumerate(panels):
                xy = points(job, x_key, key, keep)
                if xy:  # dots too, or a curve of one point (a job cut off early) would not show at all
                    axes[row, col].plot(*zip(*xy), marker="." if len(xy) < 20 else None, **style)
    legend = {}
    for row, (_, x_label) in enumerate(X_AXES):
        for col, (key, y_label) in enumerate(panels):
            axes[row, col].set(xlabel=x_label, ylabel=y_label, yscale=yscale)
            axes[row, col].set_title(key, y=1.0)  # a fixed place: no measuring of the tick labels for it
            for handle, label in zip(*axes[row, col].get_legend_handles_labels()):
                legend.setdefault(label, handle)
    legend_w = legend_h = 0.0  # inches
    if legend:
        box = fig.legend(legend.values(), legend.keys(), loc="lower center", bbox_to_anchor=(0.5, 0.0),
                         ncols=min(len(panels), len(legend))).get_window_extent(fig.canvas.get_renderer())
        legend_w, legend_h = box.width / fig.dpi + 0.2, box.height / fig.dpi + 0.1
    width, height = max(plot_w, legend_w), plot_h + legend_h
    fig.set_size_inches(width, height)
    x0 = (width - plot_w) / 2  # the plots, centred above the legend; margins for the axis labels
    fig.subplots_adjust(left=(x0 + 1.1) / width, right=(x0 + 0.98 * plot_w) / width, wspace=0.3, hspace=0.3,
                        bottom=(legend_h + 0.07 * plot_h) / height, top=(legend_h + 0.92 * plot_h) / height)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def loss_curves(jobs: list[Job], path: str, title: str = "") -> None:
    """Plot each job's total, content and style loss against evals and wall time, on a log scale.

    Losses span orders of magnitude within a sweep; values a log scale cannot show (a content
    loss of 0 at step 0, inf after divergence) are left out.
    """
    _curves(jobs, path, title, tuple((loss, "loss") for loss in LOSSES), "log")


def eval_curves(jobs: list[Job], path: str, title: str = "") -> bool:
    """Plot each job's style distance and SSIM against evals and wall time, from the rows that have them.

    False, writing nothing, when no metrics.jsonl row has them (runs from before the eval metrics).
    """
    panels = (STYLE_FIDELITY, CONTENT_FIDELITY)
    if not any(key in m for job in jobs for m in job.metrics for key, _ in panels):
        return False
    _curves(jobs, path, title, panels, "linear")
    return True


# The trade-off plot's default axes: SSIM against the sliced style distance.
TRADEOFF = (CONTENT_FIDELITY[0], STYLE_FIDELITY[0])


def tradeoff_labels(x: str, y: str) -> tuple[str, str]:
    """The trade-off plot's axis labels: content fidelity (x) and style fidelity (y) as metrics x and y measure them."""
    return axis_label("content fidelity", x), axis_label("style fidelity", y)


def tradeoff_title(x: str, y: str) -> str:
    """Where the best trade-offs lie, by the way each axis's metric is better (none for `closer to 1`)."""
    across = {rules.HIGHER: "right", rules.LOWER: "left"}.get(rules.better(x))
    up = {rules.HIGHER: "top", rules.LOWER: "bottom"}.get(rules.better(y))
    corner = " ".join(side for side in (up, across) if side)
    return f"final images: best towards the {corner}" if corner else "final images"


def tradeoff_points(jobs: list[Job], x: str = TRADEOFF[0], y: str = TRADEOFF[1]) -> list[tuple[Job, float, float]]:
    """(job, final value of x, final value of y) of every job whose summary.json has both."""
    found = [(job, (job.summary or {}).get(x), (job.summary or {}).get(y)) for job in jobs]
    return [(job, vx, vy) for job, vx, vy in found if _finite(vx) and _finite(vy)]


def tradeoff(jobs: list[Job], path: str, title: str = "", x: str = TRADEOFF[0], y: str = TRADEOFF[1]) -> bool:
    """Plot each job's final metric x (content fidelity) against its final metric y (style
    fidelity), labelled with its swept values.

    Where the definitions fix the content image's own values (rules.photo: SSIM 1 and style
    distance 1 by default), it is marked too. False, writing nothing, when no job has both.
    """
    found = tradeoff_points(jobs, x, y)
    if not found:
        return False
    fig = _figure(9, 7)
    ax = fig.subplots()
    ax.scatter([vx for _, vx, _ in found], [vy for _, _, vy in found])
    for job, vx, vy in found:
        ax.annotate(swept_label(job), (vx, vy), xytext=(4, 4), textcoords="offset points", fontsize=8)
    photo = (rules.photo(x), rules.photo(y))
    if None not in photo:
        ax.scatter(*photo, marker="x", color="grey")
        ax.annotate("content image", photo, xytext=(4, 4), textcoords="offset points", fontsize=8, color="grey")
    x_label, y_label = tradeoff_labels(x, y)
    ax.set(xlabel=x_label, ylabel=y_label, title=tradeoff_title(x, y))
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # all of the labels, however long
    return True
