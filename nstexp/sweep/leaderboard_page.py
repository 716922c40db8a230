"""The leaderboard's page, written from its records (nstexp.sweep.leaderboard): a table and a
contact sheet per pair, an overall table, and the text the measurements support: where the
default stands, which methods lead which metric, whether StyleEval ranks the methods as the
yardstick's own metrics do, and whether the default is on the Pareto front."""

from __future__ import annotations

import math
import os

from nstexp.eval import rules
from nstexp.eval.tables import markdown_table
from nstexp.sweep.contact_sheet import contact_sheet
from nstexp.sweep.results import Job

SHEET_CELL = 160  # px per image on the sheets
SHEET_WRAP = 8  # results per row: some forty methods in five rows, 1.5K px wide
# The Pareto axes: content fidelity against style closeness, the yardstick's own pair.
CONTENT_AXIS, STYLE_AXIS = "eval/ssim", "eval/style_sw"
# StyleEval's scores beside the yardstick's metrics that measure the same thing.
AGREEMENT = (("eval/styleeval_cf", "eval/ssim"), ("eval/styleeval_cf", "eval/content"),
             ("eval/styleeval_ge", "eval/style_gram"), ("eval/styleeval_ge", "eval/style_sw"),
             ("eval/styleeval_ge", "eval/colour_style"), ("eval/styleeval_lp", "eval/style_sw"))
STRONG = 0.5  # a rank correlation at least this on every pair: "agree"


def _short(key: str) -> str:
    return key.removeprefix("eval/")


def goodness(records: list[dict], key: str) -> dict[str, float]:
    """Each completed method's score on metric `key`, higher better; methods without a finite value left out."""
    out = {}
    for r in records:
        value = r["metrics"].get(key)
        if r["status"] == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            out[r["method"]] = -rules.badness(rules.BETTER[key], value)
    return {m: g for m, g in out.items() if math.isfinite(g)}


def rank(scores: dict[str, float], method: str) -> int | None:
    """1 for the best; None when `method` has no score."""
    if method not in scores:
        return None
    return 1 + sum(g > scores[method] for g in scores.values())


def leaders(scores: dict[str, float]) -> list[str]:
    best = max(scores.values(), default=None)
    return [m for m, g in scores.items() if g == best]


def spearman(records: list[dict], a: str, b: str) -> tuple[float, int]:
    """Spearman's ρ between the methods' goodness on `a` and on `b` (NaN below 3 methods), and their number."""
    from scipy.stats import spearmanr  # here: the rest of the page needs no scipy

    ga, gb = goodness(records, a), goodness(records, b)
    common = [m for m in ga if m in gb]
    if len(common) < 3:
        return math.nan, len(common)
    rho = spearmanr([ga[m] for m in common], [gb[m] for m in common]).statistic
    return float(rho), len(common)


def dominators(records: list[dict], method: str) -> list[str] | None:
    """The methods at least as good as `method` on both Pareto axes and better on one; None if it has no point."""
    gc, gs = goodness(records, CONTENT_AXIS), goodness(records, STYLE_AXIS)
    if method not in gc or method not in gs:
        return None
    c, s = gc[method], gs[method]
    return [m for m in gc if m in gs and gc[m] >= c and gs[m] >= s and (gc[m] > c or gs[m] > s)]


def to_reach_front(records: list[dict], method: str) -> tuple[float, float]:
    """What would put a dominated `method` on the front, in the axes' own values: a content score
    beyond every method at least as close to the style as it is, or (at its content score) a
    style score beyond every method at least as faithful to the content as it is."""
    gc, gs = goodness(records, CONTENT_AXIS), goodness(records, STYLE_AXIS)
    others = [m for m in gc if m in gs and m != method]
    content = max(gc[m] for m in others if gs[m] >= gs[method])
    style = max(gs[m] for m in others if gc[m] >= gc[method])
    raw = {rules.HIGHER: 1.0, rules.LOWER: -1.0}
    return content * raw[rules.BETTER[CONTENT_AXIS]], style * raw[rules.BETTER[STYLE_AXIS]]


def machine() -> str:
    import platform

    from nstexp.network.hardware import cpu_bf16, cpu_model

    # The bf16 instructions decide the speed of a CPU of one name severalfold (docs/speed-and-memory.md).
    bf16 = cpu_bf16()
    return (f"{cpu_model()}, {os.cpu_count()} cores ({', '.join(bf16) if bf16 else 'no bf16 instructions'}), "
            f"{platform.system()} {platform.machine()}")


def _standing(by_pair: dict[str, list[dict]], default: str) -> list[str]:
    header = ["metric", "better", *(f"{p}: default's rank" for p in by_pair), *(f"{p}: leader" for p in by_pair)]
    rows = []
    for key in rules.HEADLINE:
        scores = {p: goodness(rs, key) for p, rs in by_pair.items()}
        ranks = [f"{rank(s, default)} of {len(s)}" if rank(s, default) else "n/a" for s in scores.values()]
        rows.append([_short(key), rules.BETTER[key], *ranks, *(", ".join(leaders(s)) or "n/a" for s in scores.values())])
    return ["## Where the default stands, and who leads", "",
            f"The default is `{default}`. For each metric, its rank among the methods that completed on each pair "
            "(1 = best, by the metric's own rule) and the method that leads it.", "",
            markdown_table(header, rows)]


def _agreement(by_pair: dict[str, list[dict]]) -> list[str]:
    header = ["StyleEval", "yardstick", *by_pair, "verdict"]
    rows, verdicts = [], []
    for a, b in AGREEMENT:
        rhos = [spearman(rs, a, b)[0] for rs in by_pair.values()]
        known = [r for r in rhos if math.isfinite(r)]
        verdict = ("too few methods" if not known else "agree" if min(known) >= STRONG
                   else "disagree" if max(known) <= 0 else "agree in part" if min(known) > 0 else "mixed")
        verdicts.append(f"{_short(a)} and {_short(b)}: {verdict}")
        rows.append([_short(a), _short(b), *(f"{r:+.2f}" if math.isfinite(r) else "n/a" for r in rhos), verdict])
    return ["## Does StyleEval agree with the yardstick?", "",
            "Spearman's rank correlation (scipy.stats.spearmanr) between the methods' scores on a StyleEval "
            "score and on the yardstick metric that measures the same thing, per pair, each metric turned so "
            f"that higher is better: +1 ranks the methods alike. \"agree\": ρ ≥ {STRONG} on every pair; "
            "\"agree in part\": positive on every pair; \"disagree\": never positive; else \"mixed\".", "",
            markdown_table(header, rows), "In short: " + "; ".join(verdicts) + "."]


def _pareto(by_pair: dict[str, list[dict]], default: str) -> list[str]:
    lines = ["## The default against the Pareto front", "",
             f"Content fidelity is `{CONTENT_AXIS}` ({rules.BETTER[CONTENT_AXIS]} is better), style closeness "
             f"`{STYLE_AXIS}` ({rules.BETTER[STYLE_AXIS]} is better). A method dominates the default when it is at "
             "least as good on both and better on one.", ""]
    for pair, rs in by_pair.items():
        found = dominators(rs, default)
        if found is None:
            lines.append(f"- {pair}: the default has no score here.")
        elif not found:
            lines.append(f"- {pair}: the default is on the Pareto front.")
        else:
            values = {r["method"]: r["metrics"] for r in rs}
            named = ", ".join(f"`{m}` ({_short(CONTENT_AXIS)} {values[m][CONTENT_AXIS]:.4g}, {_short(STYLE_AXIS)} "
                              f"{values[m][STYLE_AXIS]:.4g})" for m in found)
            own = values[default]
            content, style = to_reach_front(rs, default)
            word = {rules.HIGHER: "above", rules.LOWER: "below"}
            lines.append(f"- {pair}: the default ({_short(CONTENT_AXIS)} {own[CONTENT_AXIS]:.4g}, "
                         f"{_short(STYLE_AXIS)} {own[STYLE_AXIS]:.4g}) is dominated by {named}. It would be on "
                         f"the front with {_short(CONTENT_AXIS)} {word[rules.BETTER[CONTENT_AXIS]]} {content:.4g} "
                         f"at its {_short(STYLE_AXIS)}, or {_short(STYLE_AXIS)} "
                         f"{word[rules.BETTER[STYLE_AXIS]]} {style:.4g} at its {_short(CONTENT_AXIS)}.")
    return lines


def _overall(records: list[dict], pairs: list[str], methods: list[str]) -> list[str]:
    header = ["method", "completed", "time_s", *map(_short, rules.HEADLINE)]
    rows = []
    for m in methods:
        done = [r for r in records if r["method"] == m and r["status"] == "completed"]
        means = [sum(r["metrics"][k] for r in done) / len(done) if len(done) == len(pairs) else None
                 for k in rules.HEADLINE]
        rows.append([m, f"{len(done)} of {len(pairs)}", sum(r["time_s"] for r in records if r["method"] == m), *means])
    return ["## Overall", "", "Each metric's mean over the pairs (only for methods that completed on every pair); "
            "the time is the sum over the pairs.", "", markdown_table(header, rows)]


def _pair_section(pair: str, rs: list[dict], page_dir: str, sheet: str) -> list[str]:
    header = ["method", "status", "time_s", *map(_short, rules.HEADLINE)]
    rows = [[r["method"], r["status"] + (f": {r['reason']}" if r["reason"] else ""), r["time_s"],
             *(r["metrics"].get(k) for k in rules.HEADLINE)] for r in rs]
    return [f"## {pair}", "", f"![{pair}: every method's result, with the inputs]({os.path.relpath(sheet, page_dir)})",
            "", markdown_table(header, rows)]


def draw_sheet(rs: list[dict], pair_specs: tuple[str, str], path: str) -> None:
    """The pair's content and style images along the top, then its results in rows of SHEET_WRAP,
    each named below it: a page shows the whole sheet at a size where the results can be told apart."""
    inputs = (("content", pair_specs[0], pair_specs[0]), ("style", pair_specs[1], pair_specs[1]))
    jobs = [Job(num, r["dir"], {}, {"method": r["method"]}, None, [],
                os.path.join(r["dir"], "final.png") if r["status"] == "completed" else None, r["status"])
            for num, r in enumerate(rs)]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    contact_sheet(jobs, path, SHEET_CELL, specs_of=lambda job: inputs, wrap=SHEET_WRAP)


def sheet_path(page: str, pair: str) -> str:
    return os.path.join(os.path.splitext(page)[0], f"{pair}.png")


def write_page(records: list[dict], inputs: dict[str, tuple[str, str]], methods: list[str], page: str,
               command: str, default: str) -> None:
    """The page at `page` from the records, for the pairs of `inputs` (pair: its content and style specs)."""
    pairs = list(inputs)
    by_pair = {p: [r for r in records if r["pair"] == p] for p in pairs}
    page_dir = os.path.dirname(page) or "."
    lines = ["# Leaderboard", "",
             "Every recipe (`experiment=<name>`, conf/experiment/), every loss preset on the default config "
             "(`loss=<name>`, conf/loss/) and pastiche (`peer=pastiche`, its defaults) on the bundled pairs, each "
             "result scored by the same code as `nstexp evaluate` at the yardstick's reference size "
             "([metrics.md](metrics.md)). Time: the wall-clock time of the method's process, start to end "
             "(loading torch and the network included, scoring excluded). A method that did not complete says why "
             "in its pair's table. Written by:", "", f"    {command}", "",
             f"Machine: {machine()}.", ""]
    lines += _standing(by_pair, default) + [""]
    lines += _agreement(by_pair) + [""]
    lines += _pareto(by_pair, default) + [""]
    lines += _overall(records, pairs, methods) + [""]
    for pair, rs in by_pair.items():
        sheet = sheet_path(page, pair)
        draw_sheet(rs, inputs[pair], sheet)
        lines += _pair_section(pair, rs, page_dir, sheet) + [""]
    os.makedirs(page_dir, exist_ok=True)
    with open(page, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
