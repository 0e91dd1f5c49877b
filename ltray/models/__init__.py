"""Backbones, projection heads, SDCLR's dense/pruned branches and pruning masks, published-checkpoint loading."""
