"""One Ray Tune trial: a Ray Train pre-training, the probes, the artifacts, the final report, all journaled.

Everything the trial records for MLflow goes to its journal on the sweep's storage first (`ltray.tracking.journal`:
the run header with parameters and tags, each epoch, MAK's selection, the final figures and artifacts, the status);
an uploader thread of the trial's process sends the journal to the trial's MLflow child run meanwhile, so neither
training nor evaluation waits for the tracking server. At its end the trial waits at most `tracking_wait_s` for the
rest to be sent; what is still unsent then is sent by the sweep's driver or later by `ltray sync`.

The trial function itself only coordinates (its Tune resource request is a little memory, no CPU): the training
workers hold the trial's CPUs/GPUs while they train, and the evaluation runs afterwards as a Ray task with one
worker's resources.

Before training, a trial runs its method's pre-stages (`Component.prepare`) with `TrialStages`; MAK's (docs/math/mak.md
§1, `ltray.methods.components.mak`): the SimCLR feature extractor (Ray Train run `<trial>_extractor`), then
`mak_sample` on its final checkpoint against the pool (the embedded pool is imported once per sweep into
`<sweep>/mak_pool_<size>`), writing the selection to `<sweep>/mak/<trial>`; the trial then trains on LT ∪ selection
as any other trial. Finished stages are reused on resume or retry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltray.cluster.grid import Trial
from ltray.cluster.train_worker import TrainSettings, fit_training
from ltray.config import Config, config_from_dict
from ltray.errors import CheckpointError, LtrayError
from ltray.eval.summary import probe_title
from ltray.storage import Storage
from ltray.tracking.journal import TRIAL_FILE, JournalUploader, TrialJournal, journal_folder
from ltray.tracking.runs import TAG_CONFIG_KEY, flatten_report, standard_tags
from ltray.train.checkpoint import CHECKPOINT_FOLDER, checkpoint_name, latest_checkpoint

FINAL_MARK = "final_evaluated"
TRACKING_PENDING = "tracking_pending"  # 1.0 in a trial's last result when its journal was not all sent to MLflow
EVAL_REPORT = "eval_report.json"
DRIVER_MEMORY_BYTES = 256 * 1024**2
MAK_FOLDER = "mak"  # <sweep>/mak/<trial>: selections; the MLflow artifact folder of the MAK files
MAK_CACHE = ".cache"  # <sweep>/mak/.cache: mak_sample's embedding, ECLE and distance cache
# per scoring actor: fits beside a trial on a 2-core machine (docs/pools.md). An in-process trial
# (`workers_per_trial: 0`) scores in its own process instead (`mak_sample(in_process=True)`): a Ray Data job there
# would wait for CPUs that the running trials hold
MAK_SCORING_CPUS = 0.5


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: tracking, the parent run and the Ray Train layout."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    train: TrainSettings
    trials: dict[str, dict[str, Any]]
    git_commit: str | None = None  # the driver's (trial processes may run from a copy without `.git`)
    tracking_wait_s: float = 60.0

    def trial(self, name: str) -> Trial:
        if name not in self.trials:
            raise LtrayError(f"trial {name!r} is not part of this sweep's grid (was the config changed before --resume?)")
        return Trial.from_param(self.trials[name])

    def journal(self, name: str) -> TrialJournal:
        return TrialJournal(journal_folder(Storage(self.train.storage_path).parent, name))


def trial_tags(cfg: Config, trial: Trial, commit: str | None = None) -> dict[str, str]:
    """The MLflow tags of a trial's run (method, split, dataset, git commit, reference-backed, configuration)."""
    from ltray.method_names import parse_method

    tags = standard_tags(
        method=cfg.method.name, split=str(cfg.data.split), dataset=cfg.data.dataset,
        reference_backed=parse_method(cfg.method.name).reference_backed, commit=commit,
    )
    tags[TAG_CONFIG_KEY] = trial.config_key
    tags["ltray.seed"] = str(cfg.run.seed)
    return tags


def journal_start(journal: TrialJournal, parent_run_id: str, trial: Trial, cfg: Config,
                  commit: str | None = None) -> None:
    """The run header of this start of the trial: its run (under `parent_run_id`, named after the trial, found
    or created by the uploader), parameters and tags."""
    journal.append(TRIAL_FILE, {"kind": "run", "parent": parent_run_id, "name": trial.name,
                                "params": cfg.to_dict(), "tags": trial_tags(cfg, trial, commit)})


def evaluate_trained(config: dict[str, Any], checkpoint: Any) -> dict[str, Any]:
    """Probe the backbone of a Ray Train checkpoint (runs as a Ray task): `ltray.evaluate.evaluate_backbone`."""
    from ltray.data.loading import load_run_data
    from ltray.evaluate import evaluate_backbone, model_from_checkpoint
    from ltray.train.loop import select_device

    cfg = config_from_dict(config)
    device = select_device(cfg.run.device)
    with checkpoint.as_directory() as folder:
        path = latest_checkpoint(Path(folder))
        if path is None:
            raise CheckpointError(f"the final Ray checkpoint {checkpoint.path} holds no ltray checkpoint file")
        model = model_from_checkpoint(cfg, path, device)
    return evaluate_backbone(cfg, model.backbone, load_run_data(cfg), device)


def journal_evaluation(journal: TrialJournal, report: dict[str, Any]) -> dict[str, float]:
    """The final figures (flattened, `ltray.tracking.runs.flatten_report`), the per-class table and plot and the
    whole report as JSON, into the journal; returns the figures."""
    from ltray.tracking.artifacts import write_run_artifacts

    figures = flatten_report(report["figures"])
    with tempfile.TemporaryDirectory(prefix="ltray-eval-") as scratch:
        folder = Path(scratch)
        records = []
        per_class = report["per_class"]
        if per_class:
            primary = next(iter(per_class))
            title = f"{journal.trial}\nper-class accuracy, {probe_title(primary)}"
            for path in write_run_artifacts(folder, per_class[primary], report["pretrain_counts"], report["groups"],
                                            report["class_names"], title):
                records.append(journal.store_file(path, path.name))
        (folder / EVAL_REPORT).write_text(json.dumps(report, indent=2))
        records.append(journal.store_file(folder / EVAL_REPORT, EVAL_REPORT))
    journal.append(TRIAL_FILE, *records, {"kind": "final", "figures": figures})
    return figures


def sweep_folder(settings: TrainSettings) -> Path:
    """The sweep's folder, the parent of its Ray Train storage (`<storage>/<sweep>/train_runs`), for MAK's folders:
    a path (the preflight refuses MAK trials on a URI storage, `check_mak_storage`)."""
    return Storage(settings.storage_path).parent.local_path


def mak_pool_folder(cfg: Config, sweep_dir: Path) -> Path:
    """The pool folder of a MAK trial: `method.mak.pool` as given, or for `embedded` the sweep's
    `mak_pool_<size>`, imported once. Trials may race: each imports into its own hidden folder and renames it into
    place; a trial that finds the pool already there (another trial renamed first) keeps that one."""
    from ltray.data.pool_store import import_pool, is_pool_folder

    k = cfg.method.mak
    if k.pool != "embedded":
        return Path(k.pool)
    target = sweep_dir / f"mak_pool_{k.pool_size}"
    if is_pool_folder(target):
        return target
    sweep_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=sweep_dir, prefix=f".{target.name}."))
    try:
        staged = import_pool(f"embedded:{k.pool_size}", staging / "pool")
        try:
            os.rename(staged, target)
        except OSError:
            if not is_pool_folder(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def finished_sibling_checkpoint(extractor: Config, siblings: Mapping[str, Mapping[str, Any]],
                                settings: TrainSettings) -> Path | None:
    """The final checkpoint of a sweep trial that already trained exactly the extractor's SimCLR run (same config
    apart from its name and the unused `method.mak` section), when trials train in-process (their checkpoints are
    plain files in the sweep's storage); None otherwise. Training is deterministic given the config, so that run
    is the extractor this trial would train."""
    if settings.workers != 0:
        return None

    def comparable(config: Config) -> dict[str, Any]:
        flat = config.to_dict()
        flat["run"] = {**flat["run"], "name": ""}
        flat["method"] = {**flat["method"], "mak": None}
        return flat

    wanted = comparable(extractor)
    for name, param in siblings.items():
        candidate = config_from_dict(dict(param["config"]))
        if comparable(candidate) != wanted:
            continue
        path = Path(settings.storage_path) / name / CHECKPOINT_FOLDER / checkpoint_name(extractor.optim.epochs)
        if path.is_file():
            return path
    return None


@dataclass
class TrialStages:
    """A trial's `ltray.methods.base.Stages`: folders under the sweep, stages as Ray Train runs `<trial>_<stage>` (or a
    finished identical sibling run), `mak_sample` with actors of `MAK_SCORING_CPUS` CPUs and a worker's GPU share."""

    trial: Trial
    settings: TrainSettings
    siblings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def folder(self, part: str) -> Path:
        return sweep_folder(self.settings) / part / self.trial.name

    def train(self, cfg: Config, stage: str) -> Path:
        sibling = finished_sibling_checkpoint(cfg, self.siblings, self.settings)
        if sibling is not None:
            print(f"trial {self.trial.name}: the {stage} is the finished identical run {sibling.parent.parent.name}")
            return sibling
        result = fit_training(cfg, f"{self.trial.name}_{stage}", self.settings, None)
        if result.checkpoint is None:
            raise LtrayError(f"trial {self.trial.name}: the {stage} ended without a checkpoint")
        with result.checkpoint.as_directory() as folder:  # the storage is a path (`check_mak_storage`): no copy
            checkpoint = latest_checkpoint(Path(folder))
        if checkpoint is None:
            raise CheckpointError(f"the {stage}'s Ray checkpoint {result.checkpoint.path} holds no ltray checkpoint")
        return checkpoint

    def sample(self, cfg: Config, checkpoint: Path, out: Path) -> Path:
        from ltray.pools.mak_job import mak_sample

        k, workers, sweep_dir = cfg.method.mak, self.settings.workers, sweep_folder(self.settings)
        return mak_sample(cfg, checkpoint, mak_pool_folder(cfg, sweep_dir), out, k.budget, k.passes, actors=max(1, workers),
                          num_cpus_per_actor=MAK_SCORING_CPUS, num_gpus_per_actor=min(self.settings.gpus_per_worker, 1.0),
                          cache_dir=sweep_dir / MAK_FOLDER / MAK_CACHE, in_process=workers == 0)


def journal_mak_selection(journal: TrialJournal, selection: Path) -> None:
    """The selection's manifest, table and histograms as artifacts under `mak/` of the trial's run, and its summary
    figures as metrics (`mak_selected`, mean ECLE and distance of the pool and of the selection)."""
    import numpy as np

    from ltray.data.selection import MANIFEST_NAME, TABLE_NAME, read_selection_manifest
    from ltray.pools.mak_job import HISTOGRAMS, SCORES_FILE

    positions = np.asarray(read_selection_manifest(selection)["positions"], dtype=np.int64)
    with np.load(selection / SCORES_FILE) as scores:
        ecle, distance = scores["ecle"], scores["distance"]
    metrics = {"mak_selected": float(positions.size), "mak_ecle_mean": float(ecle.mean()),
               "mak_ecle_selected_mean": float(ecle[positions].mean()),
               "mak_distance_mean": float(distance.mean()),
               "mak_distance_selected_mean": float(distance[positions].mean())}
    artifacts = [journal.store_file(selection / name, f"{MAK_FOLDER}/{name}")
                 for name in (MANIFEST_NAME, TABLE_NAME, *HISTOGRAMS.values())]
    journal.append(TRIAL_FILE, {"kind": "tags", "tags": {"ltray.mak_selection": str(selection)}},
                   {"kind": "metric", "step": 0, "metrics": metrics}, *artifacts)


def run_trial(param: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable of every sweep trial; `param["trial"]` is the trial's name. The evaluation
    task leaves the trial's placement group (which holds only the driver's memory) for the trial's resources.
    The final result repeats the last epoch's metrics (a scheduler's metric must be in every result) next to the
    final figures, and `tracking_pending` 1.0 when MLflow did not get the whole journal in time. A trial that
    errors or is stopped early gets its status (FAILED or KILLED) journaled by the sweep's Tune callback, which
    sees every way a trial can end."""
    import ray
    import ray.tune

    from ltray.methods.method import part_classes

    trial = context.trial(str(param["trial"]))
    cfg = config_from_dict(trial.config)
    journal = context.journal(trial.name)
    earlier = journal.view()
    if earlier.final_figures is not None:  # finished in an earlier start of the sweep
        ray.tune.report({**earlier.last_epoch_metrics, **earlier.final_figures, "epoch": cfg.optim.epochs,
                         FINAL_MARK: 1.0})
        return
    journal_start(journal, context.parent_run_id, trial, cfg, context.git_commit)
    uploader = JournalUploader(journal, context.tracking_uri, context.experiment).start()
    try:
        config, prepared, stages = trial.config, cfg, TrialStages(trial, context.train, context.trials)
        for part in part_classes(cfg):
            prepared = part.prepare(prepared, stages)  # the part's pre-stages (MAK's)
        if prepared is not cfg:
            if prepared.data.extra_data != cfg.data.extra_data:  # a selection (MAK's)
                journal_mak_selection(journal, Path(str(prepared.data.extra_data)))
            cfg, config = prepared, prepared.to_dict()
        result = fit_training(cfg, trial.name, context.train, journal, tune_reports=True)
        if result.checkpoint is None:
            raise LtrayError(f"trial {trial.name}: training ended without a checkpoint")
        settings = context.train
        if settings.workers == 0:  # the trial holds the resources and trained here: it evaluates here too
            report = evaluate_trained(config, result.checkpoint)
        else:
            evaluate = ray.remote(evaluate_trained).options(
                num_cpus=settings.cpus_per_worker, num_gpus=min(settings.gpus_per_worker, 1.0), max_retries=0,
                scheduling_strategy="DEFAULT",
            )
            report = ray.get(evaluate.remote(config, result.checkpoint))
        figures = journal_evaluation(journal, report)
        journal.append(TRIAL_FILE, {"kind": "status", "status": "FINISHED"})
    except BaseException:
        uploader.drain(0.0)  # one last pass; the sweep's driver sends the rest with the trial's status
        raise
    sent = uploader.drain(context.tracking_wait_s)
    last_epoch = {key: value for key, value in (result.metrics or {}).items() if isinstance(value, (int, float))}
    ray.tune.report({**last_epoch, **figures, "epoch": cfg.optim.epochs, FINAL_MARK: 1.0,
                     TRACKING_PENDING: 0.0 if sent else 1.0})
