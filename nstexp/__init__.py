"""nstexp: a research harness for neural style transfer (Gatys et al., 2016).

From Python: `nstexp.stylize(content, style, **overrides)` and `nstexp.evaluate(result,
content, style)`; see nstexp/api.py.
"""

__version__ = "0.1.0"


def stylize(content, style, out_dir=None, **overrides):
    from nstexp.api import stylize as _stylize

    return _stylize(content, style, out_dir, **overrides)


def evaluate(result, content, style, size=None):
    from nstexp.api import evaluate as _evaluate

    return _evaluate(result, content, style, size)


stylize.__doc__ = "Run one style transfer; returns (result image, summary). See nstexp.api.stylize."
evaluate.__doc__ = "The eval/ metrics of a result image. See nstexp.api.evaluate."
