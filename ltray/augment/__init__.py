"""Augmentation: batched tensor views for in-memory data, BCL's RandAugment_prob, and per-item PIL pipelines."""
