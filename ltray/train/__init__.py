"""The single-process training loop and what it needs (optimisers, schedules, state, checkpoints)."""
