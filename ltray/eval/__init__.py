"""Evaluation: features, linear probes, kNN monitor and long-tail metrics (specs/data_and_eval.md §3, §8, §9)."""
