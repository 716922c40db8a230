"""One run: config in, files and a W&B run out. Inputs, controls (colour, masks, scale),
tracking, and the runner that ties them to the engine."""
