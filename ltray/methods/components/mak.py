"""MAK as a method name (docs/math/mak.md): no training hooks, so a `mak` run trains exactly like SimCLR on its data.

The MAK pipeline itself (feature extractor, open-world sampling, retraining on LT ∪ selection) is run by a sweep
trial (`ltray.cluster.trial.run_trial`) or step by step with `ltray mak sample` and `data.extra_data`.
"""

from __future__ import annotations

from ltray.methods.base import Component
from ltray.methods.registry import register


@register("mak")
class MAK(Component):
    """Marks a run as MAK's retraining: the NT-Xent base on the dense model, nothing else."""
