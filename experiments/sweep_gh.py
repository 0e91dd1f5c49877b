"""GH sweep: Geometric Harmonization on SimCLR and SDCLR against the SimCLR baseline, over GH's warm-up
(method.gh.warmup) and any further axes of the config, on the chosen long-tail splits; one Ray Train run and one
MLflow child run per trial; prints the comparison table (mean ± std over splits).

    python experiments/sweep_gh.py --axis method.gh.warmup=5,10,15 --splits 1,2
"""

from __future__ import annotations

import sys

from ltray.cluster.cli import CONFIG_DIR, run_script

DESCRIPTION = """GH sweep: SimCLR, SimCLR+GH and SDCLR+GH over GH's warm-up epoch and further axes of the config,
on the chosen splits. Default: scenes-lt, splits 1-3, warm-up 5 and 10 of 20 epochs, Ray started locally; prints
the comparison table (All, Many/Medium/Few, Std, few-shot, k-shot; mean ± std over splits)."""


def main(argv: list[str] | None = None) -> int:
    return run_script("sweep_gh.py", DESCRIPTION, CONFIG_DIR / "sweep_gh.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
