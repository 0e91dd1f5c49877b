"""The embedded benchmark: every method on scenes-lt, 5 splits, the same budget per method, one Ray Tune sweep;
then the papers' table (All, Many / Medium / Few, Std, few-shot and 10-shot probes; mean ± std over splits), each
method's difference to SimCLR paired by split, the balanced-data SimCLR reference row, and docs/results.md.

    python experiments/benchmark_embedded.py                 # < 30 min on 2 CPU cores; writes docs/results.md
    python experiments/benchmark_embedded.py --dry-run       # the trials and their expected cost
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ltray.cluster.cli import CONFIG_DIR, run_script

ROOT = Path(__file__).resolve().parents[1]

DESCRIPTION = """Embedded benchmark: SimCLR, SDCLR, Focal, LoTaR, BCL, GH (on SimCLR), SDCLR+GH, COLT and MAK (with the
embedded OOD pool) on scenes-lt, splits 1-5, plus SimCLR pre-trained on the balanced set D_b (the reference row).
Prints and logs to MLflow the comparison table and the differences to SimCLR paired by split, and writes the
results page (--results, default docs/results.md; --results none to skip)."""
REFERENCE = "simclr subset:D_b"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"),
                        help="where to write the results page (default docs/results.md; 'none' to skip)")


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"


def write_results(args: argparse.Namespace, outcome: Any, wall_seconds: float) -> None:
    from mlflow.tracking import MlflowClient

    from ltray.cluster.benchmark import BASELINE, collect_results, results_markdown

    results = collect_results(outcome.tracking_uri, outcome.parent_run_id, per_class_of=(BASELINE, REFERENCE))
    command = "python experiments/benchmark_embedded.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    page = results_markdown(
        results, title="Embedded benchmark: long-tail methods on scenes-lt", command=command.strip(),
        commit=git_commit(), wall_seconds=wall_seconds, machine=machine(), reference=REFERENCE,
        notes=[f"Sweep `{outcome.name}`, MLflow parent run `{outcome.parent_run_id}`; per-trial runs, per-class "
               "tables and plots are in MLflow (docs/mlflow.md).",
               "Budget and probes: ltray/configs/benchmark_embedded.yaml (the probes train on features extracted "
               "once without augmentation, `eval.probe_augment: false`, at their full schedules). COLT and MAK add "
               "pool images to the training set (COLT from its first "
               "resample, MAK from the start), so at the same epoch count they take more optimiser steps than the "
               "other methods, as in their papers."],
    )
    print(page)
    MlflowClient(outcome.tracking_uri).log_text(outcome.parent_run_id, page, "results.md")
    if args.results != "none":
        target = Path(args.results)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(page)
        os.replace(temporary, target)
        print(f"results page: {target}")


def main(argv: list[str] | None = None) -> int:
    return run_script(
        "benchmark_embedded.py", DESCRIPTION, CONFIG_DIR / "benchmark_embedded.yaml", argv,
        add_arguments=add_arguments, after_sweep=write_results,
    )


if __name__ == "__main__":
    sys.exit(main())
