"""MAK (docs/math/mak.md): its pre-stages (`MAK.prepare`) train a SimCLR feature extractor and select extra data from a
pool; the retraining on LT ∪ selection has no hooks (SimCLR). Step by step: `ltray mak sample`, `data.extra_data`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ltray.methods.base import Component, Cost, Stages
from ltray.methods.registry import register

if TYPE_CHECKING:
    from ltray.config import Config


def extractor_config(cfg: Config) -> Config:
    """MAK's feature extractor (docs/math/mak.md §1 step 1): the config as SimCLR, for `method.mak.extractor_epochs`
    epochs (0: `optim.epochs`)."""
    epochs = cfg.method.mak.extractor_epochs or cfg.optim.epochs
    return cfg.replace({"method.name": "simclr", "optim.epochs": epochs})


@register("mak")
class MAK(Component):
    """Marks a run as MAK's retraining: the NT-Xent base on the dense model, nothing else."""

    @classmethod
    def input_paths(cls, cfg: Config) -> dict[str, str | None]:
        k = cfg.method.mak
        return {} if k.pool == "embedded" else {"method.mak.pool": k.pool}

    @classmethod
    def prepare(cls, cfg: Config, stages: Stages) -> Config:
        """Without `data.extra_data`: the config with `data.extra_data` = the selection folder `stages.folder("mak")`,
        reused when complete, else made by training the extractor and sampling the pool with its final checkpoint."""
        from ltray.data.selection import MANIFEST_NAME, read_selection_manifest

        if cfg.data.extra_data:
            return cfg
        out = stages.folder(cls.name)
        if (out / MANIFEST_NAME).is_file():
            read_selection_manifest(out)
        else:
            extractor = extractor_config(cfg)
            out = stages.sample(extractor, stages.train(extractor, "extractor"), out)
        return cfg.replace({"data.extra_data": str(out)})

    @classmethod
    def cost(cls, cfg: Config, train_size: int, pool_size: Callable[[Path], int | None]) -> Cost:
        """Without `data.extra_data`: the extractor, the pool's passes (R + 1) and the ID set's, the selection."""
        if cfg.data.extra_data:
            return Cost()
        k, epochs = cfg.method.mak, cfg.optim.epochs
        pool = k.pool_size if k.pool == "embedded" else pool_size(Path(k.pool))
        note = "; MAK: extractor run, pool scoring and retraining on LT + selection"
        if pool is None:
            note += f" (pool size of {k.pool} unknown: its scoring is not counted)"
        return Cost((k.extractor_epochs or epochs) * train_size + epochs * min(k.budget, pool or k.budget),
                    (k.passes + 1) * (pool or 0) + train_size, note)
