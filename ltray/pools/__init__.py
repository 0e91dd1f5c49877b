"""Unlabeled image pools: Parquet storage (`store`), Ray Data scoring (`scoring`), MAK sampling end to end
(`mak_job`) and the selections it writes for pre-training's `data.extra_data` (`selection`)."""

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
from ltray.pools.selection import read_selection
from ltray.pools.store import (
    PoolInfo,
    import_pool,
    open_pool_dataset,
    read_pool_arrays,
    read_pool_info,
    show_pool,
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
