"""Evaluation: features, linear probes, kNN monitor and long-tail metrics (docs/math/data_and_eval.md §3, §8, §9)."""
