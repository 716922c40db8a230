"""nstexp: a research harness for neural style transfer (Gatys et al., 2016)."""

__version__ = "0.1.0"
