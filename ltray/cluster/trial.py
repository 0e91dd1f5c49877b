"""One Ray Tune trial: an MLflow child run, a Ray Train pre-training, the probes, the artifacts, the final report.

The trial function itself only coordinates (its Tune resource request is a little memory, no CPU): the training
workers hold the trial's CPUs/GPUs while they train, and the evaluation runs afterwards as a Ray task with one
worker's resources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.cluster.grid import Trial
from ltray.cluster.train_worker import MlflowTarget, TrainSettings, fit_training
from ltray.config import Config, config_from_dict
from ltray.errors import CheckpointError, LtrayError
from ltray.tracking.runs import TAG_CONFIG_KEY, TAG_FINAL_KEYS, SweepTracking, standard_tags

FINAL_MARK = "final_evaluated"
EVAL_REPORT = "eval_report.json"
DRIVER_MEMORY_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: tracking, the parent run and the Ray Train layout."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    train: TrainSettings
    trials: dict[str, dict[str, Any]]

    def trial(self, name: str) -> Trial:
        if name not in self.trials:
            raise LtrayError(f"trial {name!r} is not part of this sweep's grid (was the config changed before --resume?)")
        return Trial.from_param(self.trials[name])


def trial_tags(cfg: Config, trial: Trial) -> dict[str, str]:
    """The MLflow tags of a trial's run (method, split, dataset, git commit, reference-backed, configuration)."""
    from ltray.methods.registry import parse_method

    tags = standard_tags(
        method=cfg.method.name, split=str(cfg.data.split), dataset=cfg.data.dataset,
        reference_backed=parse_method(cfg.method.name).reference_backed,
    )
    tags[TAG_CONFIG_KEY] = trial.config_key
    tags["ltray.seed"] = str(cfg.run.seed)
    return tags


def open_trial_run(tracking: SweepTracking, parent_run_id: str, trial: Trial, cfg: Config) -> tuple[str, bool]:
    """The trial's child run: the existing one under this parent (a resumed or retried trial continues it), else a
    new one. Returns (run id, whether it already FINISHED with its final figures)."""
    run_id = tracking.find_child(parent_run_id, trial.name)
    if run_id is None:
        return tracking.start_child(parent_run_id, trial.name, cfg.to_dict(), trial_tags(cfg, trial)), False
    run = tracking.client.get_run(run_id)
    if run.info.status == "FINISHED" and json.loads(run.data.tags.get(TAG_FINAL_KEYS, "[]")):
        return run_id, True
    return tracking.resume_child(run_id), False


def final_figures(tracking: SweepTracking, run_id: str) -> dict[str, float]:
    """The final figures a finished trial logged (the keys listed in its `ltray.final_keys` tag)."""
    run = tracking.client.get_run(run_id)
    keys = json.loads(run.data.tags.get(TAG_FINAL_KEYS, "[]"))
    return {key: run.data.metrics[key] for key in keys if key in run.data.metrics}


def evaluate_trained(config: dict[str, Any], checkpoint: Any) -> dict[str, Any]:
    """Probe the backbone of a Ray Train checkpoint (runs as a Ray task): `ltray.evaluate.evaluate_backbone`."""
    from ltray.data.loading import load_run_data
    from ltray.evaluate import evaluate_backbone, model_from_checkpoint
    from ltray.train.checkpoint import latest_checkpoint
    from ltray.train.loop import select_device

    cfg = config_from_dict(config)
    device = select_device(cfg.run.device)
    with checkpoint.as_directory() as folder:
        path = latest_checkpoint(Path(folder))
        if path is None:
            raise CheckpointError(f"the final Ray checkpoint {checkpoint.path} holds no ltray checkpoint file")
        model = model_from_checkpoint(cfg, path, device)
    return evaluate_backbone(cfg, model.backbone, load_run_data(cfg), device)


def log_evaluation(tracking: SweepTracking, run_id: str, report: dict[str, Any]) -> dict[str, float]:
    """Final figures as metrics (`log_final`), the per-class table and plot, and the whole report as JSON."""
    from ltray.tracking.artifacts import log_run_artifacts

    figures = tracking.log_final(run_id, report["figures"])
    per_class = report["per_class"]
    if per_class:
        primary = next(iter(per_class))
        log_run_artifacts(tracking.client, run_id, per_class[primary], report["pretrain_counts"], report["groups"],
                          report["class_names"])
    tracking.client.log_text(run_id, json.dumps(report, indent=2), EVAL_REPORT)
    return figures


def run_trial(param: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable of every sweep trial; `param["trial"]` is the trial's name. The evaluation
    task leaves the trial's placement group (which holds only the driver's memory) for the trial's resources.
    The final result repeats the last epoch's metrics (a scheduler's metric must be in every result) next to the
    final figures. A trial that errors or is stopped early has its run closed by the sweep's Tune callback
    (FAILED or KILLED), which sees every way a trial can end."""
    import ray
    import ray.tune

    trial = context.trial(str(param["trial"]))
    cfg = config_from_dict(trial.config)
    tracking = SweepTracking(context.tracking_uri, context.experiment)
    run_id, finished = open_trial_run(tracking, context.parent_run_id, trial, cfg)
    if finished:
        latest = tracking.client.get_run(run_id).data.metrics
        ray.tune.report({**latest, **final_figures(tracking, run_id), "epoch": cfg.optim.epochs, FINAL_MARK: 1.0})
        return
    target = MlflowTarget(context.tracking_uri, context.experiment, run_id)
    result = fit_training(cfg, trial.name, context.train, target)
    if result.checkpoint is None:
        raise LtrayError(f"trial {trial.name}: training ended without a checkpoint")
    settings = context.train
    evaluate = ray.remote(evaluate_trained).options(
        num_cpus=settings.cpus_per_worker, num_gpus=min(settings.gpus_per_worker, 1.0), max_retries=0,
        scheduling_strategy="DEFAULT",
    )
    report = ray.get(evaluate.remote(trial.config, result.checkpoint))
    figures = log_evaluation(tracking, run_id, report)
    tracking.finish(run_id, "FINISHED")
    last_epoch = {key: value for key, value in (result.metrics or {}).items() if isinstance(value, (int, float))}
    ray.tune.report({**last_epoch, **figures, "epoch": cfg.optim.epochs, FINAL_MARK: 1.0})
