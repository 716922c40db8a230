"""The metrics' names and which way each is better: what ranks results without computing any
(`nstexp compare --sort`, plots' axis labels). Plain Python: no torch. See nstexp.eval.metrics."""

from __future__ import annotations

import math

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
REFERENCE_SIZE = 256  # the longest side every metric is computed at

# Which way each headline metric is better (see the module docstring); a per-layer key
# (eval/style_sw/relu3_1) is better the way its family is.
HIGHER, LOWER, NEAR_1 = "higher", "lower", "closer to 1"
BETTER = {"eval/ssim": HIGHER, "eval/content": LOWER, "eval/style_gram": LOWER, "eval/style_sw": LOWER,
          "eval/colour_style": LOWER, "eval/colour_content": LOWER, "eval/tv": NEAR_1,
          # The literature's (docs/metrics.md): StyleEval's similarities, StyleID's distances.
          "eval/styleeval_cf": HIGHER, "eval/styleeval_ge": HIGHER, "eval/styleeval_lp": HIGHER,
          "eval/styleeval": HIGHER, "eval/cfsd": LOWER, "eval/colour_hellinger": LOWER,
          # A video run's temporal consistency (nstexp.video.consistency): of pairs of frames, not of one image.
          "eval/warp_error": LOWER}
# What the content image scores against itself, where the definition fixes it: where the photo
# sits on a plot of two of these (the trade-off plot marks it).
PHOTO = {"eval/ssim": 1.0, "eval/content": 0.0, "eval/style_gram": 1.0, "eval/style_sw": 1.0,
         "eval/colour_content": 0.0, "eval/tv": 1.0, "eval/styleeval_cf": 1.0, "eval/cfsd": 0.0}
PER_LAYER = ("eval/style_gram", "eval/style_sw")
HEADLINE = tuple(k for k in BETTER if k != "eval/warp_error")  # what `nstexp evaluate` prints of an image


def better(key: str) -> str | None:
    """Which way metric `key` is better (HIGHER, LOWER or NEAR_1); None for a key that is no metric."""
    family, _, layer = key.rpartition("/")
    if family in PER_LAYER and layer in STYLE_LAYERS:
        return BETTER[family]
    return BETTER.get(key)


def photo(key: str) -> float | None:
    """What the content image scores on metric `key` by definition (per-layer keys as their family); None if nothing fixes it."""
    family, _, layer = key.rpartition("/")
    if family in PER_LAYER and layer in STYLE_LAYERS:
        return PHOTO[family]
    return PHOTO.get(key)


def badness(rule: str, value: float) -> float:
    """How far `value` is from the best under `rule`: 0 or less is best, the lower the better.

    NEAR_1 measures on a log scale, since the value is a ratio (half and twice as much are
    equally far off); 0 and below are infinitely far.
    """
    if rule == HIGHER:
        return -value
    if rule == LOWER:
        return value
    if rule == NEAR_1:
        return abs(math.log(value)) if value > 0 else math.inf
    raise ValueError(f"unknown ranking rule {rule!r} (allowed: {HIGHER}, {LOWER}, {NEAR_1})")
