"""Torch helpers every layer above shares: the distributed no-ops and gathers (`distributed`, docs/math/README.md
convention 4) and the per-index state (`state`, convention 3)."""
