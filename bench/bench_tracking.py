"""What tracking costs a training epoch, measured in one run: the same in-process pre-training (scenes-lt by default)
without tracking, and with its journal sent to a real `mlflow server` on loopback by the trial's uploader thread
while it trains (ltray's sweep path). After one discarded warm-up run, each variant runs `--repeats` times in turn;
the median epoch time (epochs after the first) of each is printed, with the ratio tracked / untracked (goal: at
most 1.02).

    python bench/bench_tracking.py [--config ltray/configs/embedded_simclr.yaml] [--epochs 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltray.cluster.train_worker import TrainSettings, fit_in_process  # noqa: E402
from ltray.config import Config, load_config  # noqa: E402
from ltray.storage import Storage  # noqa: E402
from ltray.tracking.journal import TRIAL_FILE, JournalUploader, TrialJournal  # noqa: E402
from ltray.tracking.runs import SweepTracking  # noqa: E402
from ltray.tracking.server import MlflowServer  # noqa: E402
from ltray.train.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_epoch_s(run_folder: Path) -> float:
    state = load_checkpoint(latest_checkpoint(run_folder / "checkpoints"))
    times = [float(entry["epoch_time_s"]) for entry in state["history"][1:]]
    return statistics.median(times)


def untracked(cfg: Config, workdir: Path, name: str) -> float:
    settings = TrainSettings(storage_path=str(workdir), workers=0, keep_checkpoints=1)
    fit_in_process(cfg, name, settings, None, tune_reports=False)
    return median_epoch_s(workdir / name)


def tracked(cfg: Config, workdir: Path, name: str, uri: str, parent: str) -> float:
    settings = TrainSettings(storage_path=str(workdir), workers=0, keep_checkpoints=1)
    journal = TrialJournal(Storage(str(workdir / "tracking" / name)))
    journal.append(TRIAL_FILE, {"kind": "run", "parent": parent, "name": name, "params": cfg.to_dict(), "tags": {}})
    uploader = JournalUploader(journal, uri, "bench-tracking").start()
    fit_in_process(cfg, name, settings, journal, tune_reports=False)
    if not uploader.drain(60.0):
        raise SystemExit("the tracking server did not take the journal")
    return median_epoch_s(workdir / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "ltray" / "configs" / "embedded_simclr.yaml"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, {"optim.epochs": args.epochs, "optim.warmup_epochs": 1,
                                    "run.checkpoint_every": 1, "run.progress": "off"})
    plain, with_tracking = [], []
    with tempfile.TemporaryDirectory(prefix="ltray-bench-tracking-") as folder:
        workdir = Path(folder)
        with MlflowServer(workdir / "store", startup_timeout_s=180.0) as server:
            parent = SweepTracking(server.tracking_uri, "bench-tracking").start_parent("bench", {})
            untracked(cfg, workdir / "runs", "warmup")  # the process's first run pays for imports and caches
            for repeat in range(args.repeats):
                plain.append(untracked(cfg, workdir / "runs", f"plain{repeat}"))
                with_tracking.append(tracked(cfg, workdir / "runs", f"tracked{repeat}", server.tracking_uri, parent))
    base, cost = statistics.median(plain), statistics.median(with_tracking)
    print(f"data {cfg.data.dataset}, {args.epochs} epochs (checkpoint every epoch), batch {cfg.optim.batch_size}, "
          f"median epoch time over epochs 2..{args.epochs}, median of {args.repeats} runs each")
    print(f"epoch without tracking: {base:.3f} s   runs {['%.3f' % t for t in plain]}")
    print(f"epoch with tracking:    {cost:.3f} s   runs {['%.3f' % t for t in with_tracking]}")
    print(f"ratio tracked / untracked: {cost / base:.3f} (goal <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
