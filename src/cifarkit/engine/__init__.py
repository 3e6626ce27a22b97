"""Training engine: `fit` (train.py), the step, optimizers, losses, schedules, loggers and the run
log. Checkpoint -> logits (evaluate, inference, checkpoints, devices) lives in `cifarkit.infer`."""
