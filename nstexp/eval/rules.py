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
          # A video run's temporal consistency (nstexp.video.consistency): of pairs of frames, not of one image.
          "eval/warp_error": LOWER}
PER_LAYER = ("eval/style_gram", "eval/style_sw")
HEADLINE = tuple(k for k in BETTER if k != "eval/warp_error")  # what `nstexp evaluate` prints of an image


def better(key: str) -> str | None:
    """Which way metric `key` is better (HIGHER, LOWER or NEAR_1); None for a key that is no metric."""
    family, _, layer = key.rpartition("/")
    if family in PER_LAYER and layer in STYLE_LAYERS:
        return BETTER[family]
    return BETTER.get(key)


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
