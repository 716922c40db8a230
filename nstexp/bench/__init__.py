"""`nstexp bench`: speed, memory and quality against the floor and a peer implementation."""
