"""Contrastive losses. Every loss returns a `LossOutput` (scalar, per-sample values, dataset indices)."""
