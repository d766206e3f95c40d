"""The training engine: loop, optimisers and schedule, checkpoints, distribution, precision, logs."""
