"""checkpoint -> logits, apart from training: checkpoint, restore, device, inference, evaluate,
calibration (fitting only). `engine` (training) imports this package, never the reverse."""
