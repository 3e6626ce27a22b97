"""Training engine: `fit` (train.py), `evaluate` (evaluate.py), checkpoints and the run log."""
