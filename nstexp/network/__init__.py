"""The frozen network: VGG layouts and weights, precision and device, memory estimates.

Imports nothing of nstexp but `errors`, `config` and `images`."""
