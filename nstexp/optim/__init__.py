"""Optimizing the pixels: the engine, L-BFGS and Adam, coarse to fine, stop requests.

Imports `losses` and `network`, never `run`, `sweep` or the entry points."""
