"""One training run: the loop in stages, its callbacks, checkpoint and resume, curves."""
