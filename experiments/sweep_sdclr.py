"""SDCLR sweep: SimCLR and SDCLR over the pruning ratio (method.sdclr.prune_ratio) and any further axes of the
config, on the chosen long-tail splits; one Ray Train run and one MLflow child run per trial; prints the
comparison table (mean ± std over splits).

    python experiments/sweep_sdclr.py --splits 1,2,3 --axis method.sdclr.prune_ratio=0.5,0.9
"""

from __future__ import annotations

import sys

from ltray.cluster.cli import CONFIG_DIR, run_script

DESCRIPTION = """SDCLR sweep: the SimCLR baseline and SDCLR (pruned self-competitor) over the pruning ratio and
further axes of the config, on the chosen splits. Default: scenes-lt, splits 1-3, prune ratio 0.3 and 0.9,
Ray started locally; prints the comparison table (All, Many/Medium/Few, Std, few-shot, k-shot; mean ± std over
splits)."""


def main(argv: list[str] | None = None) -> int:
    return run_script("sweep_sdclr.py", DESCRIPTION, CONFIG_DIR / "sweep_sdclr.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
