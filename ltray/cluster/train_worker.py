"""One pre-training run on Ray Train: a `TorchTrainer` whose workers each run the single-process `TrainingRun`.

Ray Train starts the workers and the torch process group (gloo on CPU, NCCL on GPU); `Pretrainer` then does SyncBN,
DDP, the distributed sampler, the all-gather with gradient and the world-size loss scaling (docs/math/README.md,
convention 4). Every epoch all workers call `ray.train.report` once; on checkpoint epochs rank 0 attaches the
ltray checkpoint, which Ray copies into the run's storage folder. After a worker dies, `FailureConfig` restarts the
group and each worker resumes exactly from `ray.train.get_checkpoint()`. A run started again under the same name
and storage path (a resumed sweep) also finds its last checkpoint there.

Rank 0 writes each epoch's metrics (step = epoch) and the run's artifacts to the trial's tracking journal on the
sweep's storage (`ltray.tracking.journal`), never to MLflow directly: the trial's process sends the journal, so
training never waits for the tracking server. Epochs trained again after a resume are written again and sent once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.common import distributed as dist_utils
from ltray.config import Config, config_from_dict
from ltray.errors import CheckpointError
from ltray.storage import Storage
from ltray.tracking.journal import TRAINING_FILE, TrialJournal
from ltray.train.checkpoint import CHECKPOINT_FOLDER, latest_checkpoint
from ltray.train.loop import TrainingRun

RESUME_KEY = "resumed_at_epoch"
ARTIFACT_FOLDER = "train"


@dataclass(frozen=True)
class TrainSettings:
    """How a pre-training run is laid out on Ray Train (`workers` 0: in the calling process, `fit_in_process`)."""

    storage_path: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1
    knn_every: int = 0
    keep_checkpoints: int = 2


class EpochLogger:
    """The `EpochReporter` of a training run: on rank 0 each epoch's metrics and every new file of the run's
    `artifacts/` folder go to the trial's journal (`journal`, None: a run nobody tracks, e.g. MAK's extractor);
    `ray.train.report` on all ranks, with the newest checkpoint file on checkpoint epochs.

    In-process mode (`keep_checkpoints` set: a run inside the calling process, no Ray Train): the checkpoints stay
    in the run folder (the newest `keep_checkpoints` of them are kept), are copied to `mirror` when the run folder
    is a local stand-in for a URI storage, and the metrics go to `ray.tune.report` when `tune_reports`."""

    def __init__(self, journal: TrialJournal | None, run_dir: Path, *, keep_checkpoints: int | None = None,
                 tune_reports: bool = False, mirror: RunMirror | None = None) -> None:
        self.journal = journal if dist_utils.rank() == 0 else None
        self.run_dir = run_dir
        self.keep_checkpoints = keep_checkpoints
        self.tune_reports = tune_reports
        self.mirror = mirror
        self.rank = dist_utils.rank()
        self.journaled: set[str] = set()

    def log_resume(self, epoch: int) -> None:
        """Record that this attempt continued from the checkpoint of `epoch` (metric `resumed_at_epoch`)."""
        if self.journal is not None:
            self.journal.append(TRAINING_FILE, {"kind": "metric", "step": epoch,
                                                "metrics": {RESUME_KEY: float(epoch)}})

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        if self.journal is not None:
            records = [*self._new_artifacts(), {"kind": "epoch", "step": epoch, "metrics": dict(metrics)}]
            self.journal.append(TRAINING_FILE, *records)
        if self.keep_checkpoints is not None:
            self._report_in_process(metrics, checkpoint_dir)
            return
        newest = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None and self.rank == 0 else None
        if newest is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="ltray-report-") as folder:
            os.replace(newest, Path(folder) / newest.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def _report_in_process(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None and self.keep_checkpoints:
            for old in sorted(checkpoint_dir.glob("epoch_*.pt"))[: -self.keep_checkpoints]:
                old.unlink()
        if checkpoint_dir is not None and self.mirror is not None:
            self.mirror.push(self.run_dir)
        if self.tune_reports:
            import ray.tune

            ray.tune.report(metrics)

    def _new_artifacts(self) -> list[dict[str, Any]]:
        folder = self.run_dir / "artifacts"
        if not folder.is_dir() or self.journal is None:
            return []
        records = []
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in self.journaled:
                records.append(self.journal.store_file(path, f"{ARTIFACT_FOLDER}/{path.name}"))
                self.journaled.add(path.name)
        return records


class RunMirror:
    """The storage copy of an in-process run whose storage is a URI (`s3://...`): the run trains in a local
    scratch folder; after each checkpoint epoch the new checkpoints and `metrics.jsonl` are uploaded to
    `<storage>/<run>/` and the checkpoints no longer kept locally are deleted there, so the storage always holds
    the newest ones. A retried or resumed run first downloads the newest checkpoint."""

    def __init__(self, remote: Storage) -> None:
        self.remote = remote
        self.checkpoints = remote.child(CHECKPOINT_FOLDER)

    def restore(self, run_dir: Path) -> Path | None:
        """Download the newest stored checkpoint into `run_dir/checkpoints`; returns it (None: nothing stored)."""
        names = [name for name in self.checkpoints.children() if name.startswith("epoch_") and name.endswith(".pt")]
        if not names:
            return None
        target = run_dir / CHECKPOINT_FOLDER / max(names)
        self.checkpoints.child(max(names)).download(target)
        return target

    def push(self, run_dir: Path) -> None:
        from ltray.train.loop import METRICS_FILE

        local = {path.name: path for path in (run_dir / CHECKPOINT_FOLDER).glob("epoch_*.pt")}
        stored = set(self.checkpoints.children())
        for name in sorted(set(local) - stored):
            self.checkpoints.child(name).upload(local[name])
        for name in sorted(stored - set(local)):
            if name.startswith("epoch_"):
                self.checkpoints.child(name).delete()
        if (run_dir / METRICS_FILE).is_file():
            self.remote.child(METRICS_FILE).upload(run_dir / METRICS_FILE)

    def checkpoint(self) -> Any:
        """The stored checkpoints folder as a `ray.train.Checkpoint` (its newest file is the run's last)."""
        import ray.train

        return ray.train.Checkpoint(self.checkpoints.fs_path, filesystem=self.checkpoints.filesystem)


def restore_from_ray(run: TrainingRun) -> int | None:
    """Resume `run` from the checkpoint Ray Train hands this worker (after a failure or a resumed sweep), if any;
    returns the epoch it holds."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = latest_checkpoint(Path(folder))
        if path is None:
            raise CheckpointError(f"the Ray checkpoint {checkpoint.path} holds no ltray checkpoint file")
        return run.resume(path)


def shard_pool_embedder(train_data: Any) -> Any:
    """COLT's pool embedder of this worker: its shard of the run's `colt_pool` dataset (ltray.train.shard_embed).
    Every worker calls this once, together (Ray Train sets up the split on the first call)."""
    import ray.train

    from ltray.train.shard_embed import POOL_DATASET, DatasetShardEmbedder

    pool = train_data.pool_images
    return DatasetShardEmbedder(ray.train.get_dataset_shard(POOL_DATASET), pool.shape[1:], len(pool))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: rebuild the config, resume from Ray's checkpoint if there is one, train
    (`TrainingRun`), report every epoch; kNN monitor every `knn_every` epochs (else `eval.knn_every`)."""
    workdir = Path(tempfile.mkdtemp(prefix="ltray-worker-"))
    try:
        cfg = config_from_dict(loop_config["config"]).replace({"run.output_dir": str(workdir), "run.progress": "off"})
        journal = loop_config.get("journal")
        logger = EpochLogger(TrialJournal(Storage(journal)) if journal else None, cfg.run_dir)
        run = TrainingRun(cfg, reporter=logger, knn_every=int(loop_config.get("knn_every") or 0),
                          pool_embedder=shard_pool_embedder if loop_config.get("colt_pool_dataset") else None)
        resumed_at = restore_from_ray(run)
        if resumed_at is not None:
            logger.log_resume(resumed_at)
        if not run.finished:
            run.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class InProcessResult:
    """What `fit_in_process` returns, shaped like the parts of `ray.train.Result` the trials read."""

    checkpoint: Any
    metrics: dict[str, float]


def fit_in_process(cfg: Config, run_name: str, settings: TrainSettings, journal: TrialJournal | None = None,
                   *, tune_reports: bool = False) -> InProcessResult:
    """One pre-training in the calling process (a sweep with `workers_per_trial: 0`): no Ray Train worker group,
    which saves its start-up (several actors) on small CPU trials. The run folder and its checkpoints are
    `settings.storage_path/run_name` (shared storage on a cluster; on a URI storage a local scratch folder copied
    there after each checkpoint, `RunMirror`); a retried or resumed trial continues from the newest checkpoint
    there, and its epochs are journaled as with Ray Train."""
    storage = Storage(settings.storage_path)
    if storage.is_local:
        return _fit_in_folder(cfg, run_name, settings, journal, settings.storage_path, None, tune_reports)
    scratch = tempfile.mkdtemp(prefix="ltray-run-")
    try:
        return _fit_in_folder(cfg, run_name, settings, journal, scratch, RunMirror(storage.child(run_name)),
                              tune_reports)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fit_in_folder(cfg: Config, run_name: str, settings: TrainSettings, journal: TrialJournal | None,
                   output_dir: str, mirror: RunMirror | None, tune_reports: bool) -> InProcessResult:
    import ray.train

    run_cfg = cfg.replace({"run.output_dir": output_dir, "run.name": run_name, "run.progress": "off"})
    logger = EpochLogger(journal, run_cfg.run_dir, keep_checkpoints=settings.keep_checkpoints,
                         tune_reports=tune_reports, mirror=mirror)
    run = TrainingRun(run_cfg, reporter=logger, knn_every=settings.knn_every)
    latest = mirror.restore(run_cfg.run_dir) if mirror is not None else latest_checkpoint(run.checkpoint_dir)
    if latest is not None:
        logger.log_resume(run.resume(latest))
    result = run.run()
    metrics = dict(result.history[-1]) if result.history else {}
    if mirror is not None:
        mirror.push(run_cfg.run_dir)
        return InProcessResult(mirror.checkpoint(), metrics)
    return InProcessResult(ray.train.Checkpoint.from_directory(str(result.checkpoint.parent)), metrics)


def fit_training(cfg: Config, run_name: str, settings: TrainSettings, journal: TrialJournal | None = None,
                 *, tune_reports: bool = False):
    """Run one pre-training on Ray Train and return its `ray.train.Result` (the last checkpoint in `.checkpoint`).

    The run folder is `settings.storage_path/run_name`; with `tune_reports` (the run is a Tune trial's training)
    the per-epoch metrics also reach Tune (not for MAK's feature extractor, whose epochs are not the trial's).
    A COLT run with an array pool also gets the pool as the Ray Dataset `colt_pool`, which the workers embed in
    shards at each resample (`ltray.train.shard_embed`). With `settings.workers == 0` the run trains in this
    process instead (`fit_in_process`).
    """
    if settings.workers == 0:
        return fit_in_process(cfg, run_name, settings, journal, tune_reports=tune_reports)
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ltray.cluster.pool_dataset import PoolShardConfig, colt_pool_dataset
    from ltray.cluster.resources import (
        placement_groups_or_none,
        resource_timeout_s,
        start_retries_within,
        wait_for_resources,
    )
    from ltray.ray_runtime import use_fast_train_reports
    from ltray.train.shard_embed import POOL_DATASET

    use_fast_train_reports()
    wait_for_resources({"CPU": settings.workers * settings.cpus_per_worker,
                        "GPU": settings.workers * settings.gpus_per_worker}, f"training run {run_name}")
    groups_before = placement_groups_or_none()
    pool = colt_pool_dataset(cfg)
    use_gpu = settings.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": settings.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = settings.gpus_per_worker
    callbacks = []
    if tune_reports:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "journal": None if journal is None else journal.folder.uri,
            "knn_every": settings.knn_every,
            "colt_pool_dataset": pool is not None,
        },
        datasets=None if pool is None else {POOL_DATASET: pool},
        dataset_config=PoolShardConfig.for_pool() if pool is not None else None,
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=run_name,
            storage_path=settings.storage_path,
            failure_config=FailureConfig(max_failures=settings.max_failures,
                                         controller_failure_limit=start_retries_within(resource_timeout_s())),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        return trainer.fit()
    except Exception:
        release_failed_run(run_name, groups_before)
        raise


def release_failed_run(run_name: str, groups_before: set[str] | None) -> None:
    """After a failed Ray Train run: remove the placement groups it left holding resources (`ltray.cluster.resources`)."""
    from ltray.cluster.resources import remove_orphaned_placement_groups

    if groups_before is None:
        return
    try:
        removed = remove_orphaned_placement_groups(groups_before)
    except Exception as error:  # the state API may be unavailable; the run's own error matters more
        print(f"training run {run_name}: could not check for placement groups left behind: {error}")
        return
    if removed:
        print(f"training run {run_name}: released {len(removed)} placement group(s) the failed run left behind")
