"""Scale-out: Ray Train workers around the pre-training loop, Ray Tune sweeps with one MLflow child run per trial."""
