"""The main job: a Ray Tune grid of SimCLR with COLT off and on (method.name ∈ {simclr, colt}), over the OOD
budget, the temperature and any further axes of the config, on the chosen long-tail splits; one Ray Train run and
one MLflow child run per trial; prints the comparison table (mean ± std over splits).

    python experiments/sweep_colt.py                      # scenes-lt + embedded OOD pool, local Ray, < 10 min on 2 CPUs
    python experiments/sweep_colt.py --data cifar100 --data-root PATH --pool random300k --pool-path PATH
                                                          # the paper setting (colt_cifar100.yaml: 2000 epochs, ...)
"""

from __future__ import annotations

import argparse
import sys

from ltray.cluster.cli import CONFIG_DIR, run_script

DESCRIPTION = """COLT sweep: SimCLR with COLT's online OOD sampling off and on, over OOD budget and temperature
(more axes from the config), on the chosen splits. With no arguments: scenes-lt with the embedded OOD pool
(method.colt.pool=embedded), Ray started locally, finishing in under 10 minutes on 2 CPU cores, then the comparison
table (All, Many/Medium/Few, Std, few-shot, k-shot; mean ± std over splits). The paper setting:
--data cifar100 --data-root PATH --pool random300k --pool-path PATH (config sweep_colt_cifar100.yaml on
colt_cifar100.yaml: ResNet-18, 2000 epochs, batch 512, warm-up 100, interval 25, budget 10000, SupCon weight 0.2,
splits 1-5)."""


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", choices=["embedded", "random300k", "list", "parquet"],
                        help="COLT's OOD pool (method.colt.pool); random300k is the 300K Random Images .npy")
    parser.add_argument("--pool-path", help="the pool file (method.colt.pool_path), e.g. 300K_random_images.npy")


def pool_sets(args: argparse.Namespace) -> list[str]:
    sets = []
    if args.pool:
        sets.append(f"method.colt.pool={args.pool}")
    if args.pool_path:
        sets.append(f"method.colt.pool_path={args.pool_path}")
    return sets


def main(argv: list[str] | None = None) -> int:
    return run_script(
        "sweep_colt.py", DESCRIPTION, CONFIG_DIR / "sweep_colt.yaml", argv,
        add_arguments=add_pool_arguments, extra_sets=pool_sets,
        dataset_configs={"cifar100": CONFIG_DIR / "sweep_colt_cifar100.yaml",
                         "cifar10": CONFIG_DIR / "sweep_colt_cifar10.yaml"},
    )


if __name__ == "__main__":
    sys.exit(main())
