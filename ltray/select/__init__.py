"""Selection math for the data-sampling methods: COLT's online OOD picks (`colt`), MAK's offline open-world
sampling (`mak`), the K-center greedy it uses (`kcenter`) and the shared k-means (`kmeans`). Pure functions on
arrays: NumPy or torch tensors, running on the tensors' device.
"""

from ltray.select.colt import (
    ColtSelection,
    cluster_budgets,
    colt_lr_total,
    colt_select,
    greedy_nearest_unused,
    is_resample_epoch,
    validate_colt_config,
)
from ltray.select.kcenter import kcenter_greedy, kcenter_greedy_naive
from ltray.select.kmeans import kmeans
from ltray.select.mak import (
    core_set,
    ecle,
    mak_run_name,
    mak_scores,
    mak_select,
    merge_passes,
    proximity,
    regrouping_batches,
)

__all__ = [
    "ColtSelection",
    "cluster_budgets",
    "colt_lr_total",
    "colt_select",
    "core_set",
    "ecle",
    "greedy_nearest_unused",
    "is_resample_epoch",
    "kcenter_greedy",
    "kcenter_greedy_naive",
    "kmeans",
    "mak_run_name",
    "mak_scores",
    "mak_select",
    "merge_passes",
    "proximity",
    "regrouping_batches",
    "validate_colt_config",
]
