"""Exact tiled evaluation of the objective: outputs larger than the network's memory allows."""
