"""Unlabeled image pools: Ray Data scoring (`scoring`) and MAK sampling end to end (`mak_job`). The pools' Parquet
storage (`ltray.data.pool_store`) and the selections MAK writes for pre-training's `data.extra_data`
(`ltray.data.selection`) are data-layer modules, since pre-training reads both; their main names are re-exported
here."""

from ltray.data.pool_store import (
    PoolInfo,
    import_pool,
    open_pool_dataset,
    read_pool_arrays,
    read_pool_info,
    show_pool,
)
from ltray.data.selection import read_selection
from ltray.pools.scoring import (
    CheckpointModel,
    ModelRecipe,
    PoolScores,
    ScoringSpec,
    StateDictModel,
    embed_pool,
    read_scores,
    score_arrays,
    score_pool,
)

__all__ = [
    "CheckpointModel",
    "ModelRecipe",
    "PoolInfo",
    "PoolScores",
    "ScoringSpec",
    "StateDictModel",
    "embed_pool",
    "import_pool",
    "open_pool_dataset",
    "read_pool_arrays",
    "read_pool_info",
    "read_scores",
    "read_selection",
    "score_arrays",
    "score_pool",
    "show_pool",
]
