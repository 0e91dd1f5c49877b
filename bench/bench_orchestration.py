"""What Ray costs around ltray's training loop, measured in one run on a local Ray:

1. Orchestration overhead of one Tune trial that runs a Ray Train pre-training (the sweep path, without the probes):
   - start: trial start (Tune's `on_trial_start`) → first epoch's result at the driver, minus that epoch's own
     training time;
   - end: last epoch's result → the trial's final result (Train teardown, `fit()` returning, `tune.report`).
2. Throughput (images/s, median over the epochs after the first) of the single-process loop (`pretrain`, all cores
   to torch), of a 1-worker and of a 2-worker Ray Train run (DDP over gloo, the cores split between the workers), on
   the same data and config; the three are run in turn `--repeats` times (so a passing load spike hits all of them)
   and the median of each is printed, with its ratio to the single process.

    python bench/bench_orchestration.py [--config ltray/configs/embedded_simclr.yaml] [--epochs 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltray.cluster import runtime  # noqa: E402
from ltray.cluster.train_worker import TrainSettings, fit_training  # noqa: E402
from ltray.config import Config, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _median_throughput(history: list[dict[str, Any]]) -> float:
    values = [float(entry["images_per_s"]) for entry in history[1:]] or [float(history[0]["images_per_s"])]
    return statistics.median(values)


def single_process(cfg: Config, workdir: Path, threads: int) -> float:
    import torch

    from ltray.train.loop import pretrain

    torch.set_num_threads(threads)
    result = pretrain(cfg.replace({"run.output_dir": str(workdir / "single"), "run.name": "single"}))
    return _median_throughput(result.history)


def ray_train(cfg: Config, workdir: Path, workers: int, cpus: float) -> float:
    settings = TrainSettings(storage_path=str(workdir / "train"), workers=workers, cpus_per_worker=cpus,
                             max_failures=0, keep_checkpoints=1)
    from ltray.train.checkpoint import latest_checkpoint, load_checkpoint

    name = f"workers{workers}"
    result = fit_training(cfg.replace({"run.name": name}), name, settings)
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(latest_checkpoint(Path(folder)))
    return _median_throughput(state["history"])


def tune_overhead(cfg: Config, workdir: Path, cpus: float) -> dict[str, float]:
    from ray import tune

    settings = TrainSettings(storage_path=str(workdir / "tune_train"), workers=1, cpus_per_worker=cpus,
                             max_failures=0, keep_checkpoints=1)
    marks: dict[str, Any] = {"results": []}

    class Clock(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            marks.setdefault("start", time.time())

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            marks["results"].append((time.time(), dict(result)))

    def trainable(config: dict[str, Any]) -> None:
        fit_training(cfg.replace({"run.name": "tuned"}), "tuned", settings)
        tune.report({"done_training": 1.0})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0, "memory": 256 * 1024**2}),
        param_space={"x": tune.grid_search([0])},
        run_config=tune.RunConfig(name="overhead", storage_path=str(workdir / "tune"), verbose=0,
                                  callbacks=[Clock()]),
    )
    tuner.fit()
    epochs = [(stamp, result) for stamp, result in marks["results"] if "epoch" in result and "loss" in result]
    final = [stamp for stamp, result in marks["results"] if result.get("done_training")]
    first_time, first = epochs[0]
    last_time, _ = epochs[-1]
    return {
        "start_overhead_s": first_time - marks["start"] - float(first["epoch_time_s"]),
        "end_overhead_s": final[-1] - last_time,
        "epochs_reported": float(len(epochs)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print them (and write them as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "ltray" / "configs" / "embedded_simclr.yaml"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 2
    cfg = load_config(args.config, {"optim.epochs": args.epochs, "optim.warmup_epochs": 1,
                                    "run.checkpoint_every": args.epochs})
    singles, ones, twos = [], [], []
    with tempfile.TemporaryDirectory(prefix="ltray-bench-") as folder:
        workdir = Path(folder)
        runtime.connect("local", num_cpus=cpus)
        try:
            overhead = tune_overhead(cfg, workdir, float(cpus))
            for repeat in range(args.repeats):
                singles.append(single_process(cfg, workdir / f"r{repeat}", cpus))
                ones.append(ray_train(cfg, workdir / f"r{repeat}", 1, float(cpus)))
                twos.append(ray_train(cfg, workdir / f"r{repeat}", 2, cpus / 2))
        finally:
            runtime.disconnect()
    single, one, two = statistics.median(singles), statistics.median(ones), statistics.median(twos)
    figures = {
        **overhead,
        "single_process_images_per_s": single,
        "train_1_worker_images_per_s": one,
        "train_2_workers_images_per_s": two,
        "ratio_1_worker_to_single": one / single,
        "ratio_2_workers_to_single": two / single,
        "cpus": float(cpus),
        "epochs": float(args.epochs),
        "repeats": float(args.repeats),
        "runs_single_process": singles,
        "runs_train_1_worker": ones,
        "runs_train_2_workers": twos,
    }
    print(f"data {cfg.data.dataset}, {args.epochs} epochs, batch {cfg.optim.batch_size}, {cpus} CPUs, "
          f"median of {args.repeats} runs each")
    print(f"Tune trial overhead: start -> first epoch result {overhead['start_overhead_s']:.1f} s "
          f"(beyond the epoch's own training), last epoch -> trial result {overhead['end_overhead_s']:.1f} s")
    print(f"throughput: single process {single:.0f} img/s; Ray Train 1 worker {one:.0f} img/s "
          f"(ratio {one / single:.2f}); 2 workers {two:.0f} img/s (ratio {two / single:.2f})")
    print("  each run (img/s): single " + ", ".join(f"{v:.0f}" for v in singles)
          + "; 1 worker " + ", ".join(f"{v:.0f}" for v in ones)
          + "; 2 workers " + ", ".join(f"{v:.0f}" for v in twos))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
