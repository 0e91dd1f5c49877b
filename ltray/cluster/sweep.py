"""Running a sweep on Ray Tune: checks first, then one parent MLflow run, one trial per grid point, the summary.

Order of work: expand and validate every trial, check the MLflow store (a store that is down fails the sweep here,
before any training), read one trial's data per split, connect to Ray, check every node (`ltray.cluster.preflight`:
shared storage, a tracking store all nodes reach, data paths, a worker that fits a node), print where to watch,
then run the grid with
at most as many trials at once as the cluster's CPUs/GPUs hold. An interrupted sweep (Ctrl-C, a lost driver)
continues with `resume=True`: Tune skips the finished trials and restarts the others, whose Ray Train runs pick up
their last checkpoint from the sweep's storage folder.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ltray.cluster.benchmark import BASELINE
from ltray.cluster.console import TrialEvents, reporting, sweep_console
from ltray.cluster.grid import SweepSpec, Trial, expand_trials, max_concurrent_trials
from ltray.cluster.preflight import check_cluster
from ltray.cluster.train_worker import TrainSettings
from ltray.cluster.trial import DRIVER_MEMORY_BYTES, EVAL_REPORT, FINAL_MARK, TRACKING_PENDING, TrialContext, run_trial
from ltray.errors import ConfigError, LtrayError
from ltray.eval.figures import RunFigures
from ltray.eval.summary import (
    comparison_markdown,
    ordered_probes,
    probe_of,
    probe_title,
    sweep_markdown,
    sweep_title,
)
from ltray.storage import Storage, resolve_storage
from ltray.tracking.sync import (
    SweepRecord,
    SyncResult,
    close_unfinished,
    journal_summary_rows,
    journal_views,
    sync_sweep,
    tracking_wait_s,
    write_sweep_record,
)

if TYPE_CHECKING:
    from ray.tune import Result

    from ltray.tracking.journal import JournalView

TRAIN_RUNS = "train_runs"
EXIT_TRACKING_PENDING = 3

Echo = Callable[[str], None]


@dataclass
class SweepOptions:
    """Where a sweep runs and records: Ray address, MLflow URI, storage root, resume, concurrency."""

    address: str | None = None
    mlflow_uri: str | None = None
    storage: str | None = None
    resume: bool = False
    max_concurrent: int | None = None
    timestamp_name: bool = False
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = None
    verbose: bool = False  # Ray's and Tune's own output on the console (else in the sweep folder's console.log)


@dataclass
class SweepOutcome:
    name: str
    sweep_dir: Storage
    tracking_uri: str
    parent_run_id: str
    summary: str  # summary.md: the comparison table, then one table per probe
    comparison: str  # its first table, what the console shows last
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    tracking_pending: SyncResult | None = None  # what MLflow did not get before the sweep ended

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.errors:
            return 1
        return EXIT_TRACKING_PENDING if self.tracking_pending is not None else 0


def _restorable(folder: Storage) -> bool:
    from ray import tune

    return folder.is_dir() and tune.Tuner.can_restore(folder.uri)


def resolve_sweep_dir(spec: SweepSpec, options: SweepOptions, root: Storage) -> Storage:
    """The sweep's Tune folder under the storage root. A timestamped name is added for a fresh sweep when asked;
    `resume` without an explicit name continues the newest restorable `<name>-<timestamp>` folder."""
    if options.resume:
        candidates = [root.child(spec.name)]
        if options.timestamp_name:
            stamped = [name for name in root.children() if name.startswith(f"{spec.name}-")]
            candidates = [root.child(name) for name in sorted(stamped, reverse=True)] + candidates
        for candidate in candidates:
            if _restorable(candidate):
                spec.name = candidate.name
                return candidate
        raise ConfigError(f"--resume: no interrupted sweep named {spec.name!r} under {root} (pass its --name)")
    if options.timestamp_name:
        spec.name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = root.child(spec.name)
    if _restorable(folder):
        raise ConfigError(f"{folder} already holds sweep {spec.name!r}; pass --resume to continue it or choose --name")
    return folder


def preflight(trials: list[Trial]) -> None:
    """Read the data of one trial per (data set, split, pool) before starting Ray: missing files fail here."""
    from ltray.data.loading import load_run_data
    from ltray.method_names import parse_method

    checked: set[tuple[Any, ...]] = set()
    for trial in sorted(trials, key=lambda t: -int(t.config["method"]["colt"]["budget"])):
        cfg = trial.build_config()
        colt = cfg.method.colt
        key = (cfg.data.dataset, cfg.data.split, cfg.data.subset, parse_method(cfg.method.name).has("colt"),
               colt.pool, colt.pool_path)
        if key in checked:
            continue
        checked.add(key)
        load_run_data(cfg)


def watch_lines(dashboard_url: str | None, tracking_uri: str, experiment_id: str) -> list[str]:
    """Where to follow the sweep: the Ray dashboard and the MLflow experiment (or how to open it)."""
    lines = [f"Ray dashboard: {dashboard_url}" if dashboard_url else "Ray dashboard: not available on this cluster"]
    if tracking_uri.startswith(("http://", "https://")):
        lines.append(f"MLflow experiment: {tracking_uri}/#/experiments/{experiment_id}")
    else:
        lines.append(f"MLflow store: {tracking_uri}")
        lines.append(f"  open it with: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
                     f"  (then http://127.0.0.1:5000/#/experiments/{experiment_id})")
    return lines


def _trial_name(trial: Any) -> str:
    return str(trial.config["trial"])


def _tune_callback(sweep_dir: Storage) -> Any:
    from ray import tune

    from ltray.cluster.console import active_events, error_reason

    class TrialStatus(tune.Callback):
        """Tells the driver's console of each trial event (`ltray.cluster.console`; looked up when called, so a
        callback restored with the Tuner on `--resume` reports to the new driver), and journals the status of a
        trial that Tune ended without its final figures (errored or early-stopped); the sweep's sync sends it."""

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            if (events := active_events()) is not None:
                events.started(_trial_name(trial))

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
            if (events := active_events()) is not None and not result.get(FINAL_MARK):
                events.epoch(_trial_name(trial), result)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            close_unfinished(sweep_dir, [_trial_name(trial)], "FAILED")
            if (events := active_events()) is not None:
                events.failed(_trial_name(trial), error_reason(trial.get_error()))

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            finished = bool((trial.last_result or {}).get(FINAL_MARK))
            if not finished:
                close_unfinished(sweep_dir, [_trial_name(trial)], "KILLED")
            if (events := active_events()) is not None:
                if finished:
                    events.finished(_trial_name(trial), trial.last_result)
                else:
                    events.stopped(_trial_name(trial))

    return TrialStatus()


def finished_earlier(sweep_dir: Storage, grid: dict[str, str]) -> list[str]:
    """The trials whose journal holds their final figures (finished before a `--resume`)."""
    return [trial for trial, view in journal_views(sweep_dir, grid).items() if view.final_figures is not None]


def summarize_sweep(sweep_dir: Storage, grid: dict[str, str], title: str) -> tuple[str, str, list[Any]]:
    """The sweep's summary (mean ± std per configuration) from its journals, written into the sweep folder as
    `summary.md` and `summary.csv`, with its figures (`write_sweep_figures`); returns the Markdown, the CSV and the
    rows (for the parent run)."""
    from ltray.eval.metrics import summary_csv
    from ltray.tracking.artifacts import SUMMARY_CSV, SUMMARY_MD

    views = journal_views(sweep_dir, grid)
    rows = journal_summary_rows(sweep_dir, grid, views)
    markdown = sweep_markdown(rows, title) if rows else f"# {title}\n\nno trial runs\n"
    csv_text = summary_csv(rows)
    sweep_dir.child(SUMMARY_MD).write_text(markdown)
    sweep_dir.child(SUMMARY_CSV).write_text(csv_text)
    write_sweep_figures(sweep_dir, grid, title, views)
    return markdown, csv_text, rows


def journal_runs(sweep_dir: Storage, grid: dict[str, str], views: Mapping[str, JournalView] | None = None
                 ) -> tuple[str, dict[str, list[RunFigures]]]:
    """The main probe and, per configuration, its finished runs (figures of that probe, per-class accuracy and
    pre-training counts from the evaluation report) read from the journals (`views`: as read by `journal_views`)."""
    from ltray.tracking.journal import TrialJournal, journal_folder

    views = journal_views(sweep_dir, grid) if views is None else views
    finished: dict[str, tuple[str, Any, dict[str, float], dict[str, Any]]] = {}
    for trial, config in grid.items():
        journal = TrialJournal(journal_folder(sweep_dir, trial))
        view = views[trial]
        if view.final_figures is not None and view.header is not None:
            finished[trial] = (config, journal, view.final_figures, view.header["params"])
    probes = ordered_probes(figure for _, _, figures, _ in finished.values() for figure in figures)
    runs: dict[str, list[RunFigures]] = {config: [] for config in dict.fromkeys(grid.values())}
    if not probes:
        return "", runs
    main = probes[0]
    for config, journal, figures, params in finished.values():
        report_file = journal.file(EVAL_REPORT)
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        runs[config].append(RunFigures(
            pair=(params.get("data", {}).get("split"), params.get("run", {}).get("seed")),
            figures={probe_of(key)[1]: value for key, value in figures.items() if probe_of(key)[0] == main},
            per_class=(report.get("per_class") or {}).get(main, []), counts=report.get("pretrain_counts", [])))
    return main, runs


def baseline_config(configs: list[str]) -> str | None:
    """The configuration the others are paired with: plain SimCLR (`simclr`, or the one configuration whose method
    is `simclr` when the key also names shared axis values, e.g. `simclr temperature:0.2`)."""
    if BASELINE in configs:
        return BASELINE
    plain = [config for config in configs if config.split()[0] == BASELINE]
    return plain[0] if len(plain) == 1 else None


def write_sweep_figures(sweep_dir: Storage, grid: dict[str, str], title: str,
                        views: Mapping[str, JournalView] | None = None) -> list[Storage]:
    """`comparison.png` and `per_class_all.png` of the finished runs (`ltray.eval.figures`) into the sweep folder;
    the baseline of the paired differences is the SimCLR configuration when the sweep has one (`baseline_config`)."""
    import tempfile

    from ltray.eval.figures import COMPARISON_PNG, PER_CLASS_ALL_PNG, plot_comparison, plot_per_class_all

    main, runs = journal_runs(sweep_dir, grid, views)
    if not any(runs.values()):
        return []
    written = []
    with tempfile.TemporaryDirectory(prefix="ltray-figures-") as scratch:
        comparison = plot_comparison(runs, Path(scratch) / COMPARISON_PNG, title=title, probe=probe_title(main),
                                     baseline=baseline_config(list(runs)))
        per_class = plot_per_class_all(runs, Path(scratch) / PER_CLASS_ALL_PNG,
                                       title=f"{title}: per-class accuracy, {probe_title(main)}")
        for local in (comparison, per_class):
            target = sweep_dir.child(local.name)
            target.upload(local)
            written.append(target)
    return written


def _parent_tags(configs: list[Any]) -> dict[str, str]:
    from ltray.method_names import parse_method
    from ltray.tracking.runs import standard_tags

    def joined(values: list[str]) -> str:
        return ",".join(dict.fromkeys(values))

    return standard_tags(
        method=joined([c.method.name for c in configs]),
        split=joined([str(c.data.split) for c in configs]),
        dataset=joined([c.data.dataset for c in configs]),
        reference_backed=all(parse_method(c.method.name).reference_backed for c in configs),
    )


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What a Tune trial itself holds: a little memory when Ray Train workers hold the CPUs/GPUs, else (in-process
    training, `workers_per_trial: 0`) one worker's CPUs and GPUs."""
    r = spec.resources
    if not r.in_process:
        return {"cpu": 0, "memory": DRIVER_MEMORY_BYTES}
    return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker, "memory": DRIVER_MEMORY_BYTES}


def _new_tuner(spec: SweepSpec, trials: list[Trial], trainable: Any, root: Storage, concurrent: int,
               callback: Any) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.asha is not None:
        # max_t beyond the last epoch: ASHA stops a trial that reaches max_t, which must not happen to a trial
        # that trained to the end and still has to be evaluated.
        scheduler = ASHAScheduler(
            time_attr="epoch", metric=spec.asha.metric, mode=spec.asha.mode,
            max_t=max(int(t.config["optim"]["epochs"]) for t in trials) + 1,
            grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(trials),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent, scheduler=scheduler,
            # an in-process trial's actor imports torch and ltray once and runs the next trials too (~10 CPU-seconds
            # saved per trial); each trial seeds, builds and tracks everything it uses afresh
            reuse_actors=spec.resources.in_process,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=root.uri, verbose=1, callbacks=[callback],
            # in-process trials are retried by Tune (Ray Train retries its own workers)
            failure_config=tune.FailureConfig(max_failures=spec.max_failures if spec.resources.in_process else 0),
        ),
    )


SHOWN_ALWAYS = ("method.name", "data.split", "run.seed")


def trial_axis_values(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    """trial name -> {key: value} for the method, split, seed and every axis key of the sweep, so Tune's tables,
    result data frames, `params.json` and the dashboard show what each trial is. A key that does not apply to a
    trial (e.g. a GH setting of a SimCLR trial) is None."""
    keys = list(SHOWN_ALWAYS) + [key for trial in trials for key in trial.overrides if key not in SHOWN_ALWAYS]
    keys = list(dict.fromkeys(keys))
    table = {}
    for trial in trials:
        cfg = trial.config
        values = {"method.name": cfg["method"]["name"], "data.split": cfg["data"]["split"],
                  "run.seed": cfg["run"]["seed"]}
        table[trial.name] = {key: trial.overrides.get(key, values.get(key)) for key in keys}
    return table


def tune_param_space(trials: list[Trial]) -> dict[str, Any]:
    """One grid entry per trial (`trial`: its name, which `run_trial` reads) plus each trial's axis values as
    real entries of its config."""
    from ray import tune

    table = trial_axis_values(trials)
    space: dict[str, Any] = {"trial": tune.grid_search([trial.name for trial in trials])}
    for key in next(iter(table.values()), {}):
        value = cast(Callable[[dict[str, Any]], Any], lambda config, key=key: table[config["trial"]][key])
        space[key] = tune.sample_from(value)
    return space


def _start_message(spec: SweepSpec, trials: list[Trial], concurrent: int) -> str:
    r = spec.resources
    gpus = f" + {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
    layout = (f"trained in the trial's process, {r.cpus_per_worker:g} CPU{gpus}" if r.in_process
              else f"{r.workers} worker(s) x {r.cpus_per_worker:g} CPU{gpus}")
    return f"sweep {spec.name}: {len(trials)} trials, up to {concurrent} at once ({layout} per trial)"


def run_sweep(spec: SweepSpec, options: SweepOptions, echo: Echo | None = None) -> SweepOutcome:
    """Run (or resume) a sweep end to end and return its outcome; user errors raise LtrayError before training.
    `echo` gets the sweep's own lines (default: the console, with Ray's and Tune's output sent to the sweep
    folder's `console.log` unless `options.verbose`)."""
    from ltray.tracking.runs import TAG_GIT_COMMIT
    from ltray.tracking.store import check_tracking_reachable, create_sqlite_store, resolve_tracking_uri

    trials = expand_trials(spec)
    tracking_uri = resolve_tracking_uri(options.mlflow_uri, Path.cwd())
    check_tracking_reachable(tracking_uri)
    wait_s = tracking_wait_s()

    from ltray import ray_runtime as runtime

    if options.address not in (None, "", "local"):
        runtime.use_token_auth_when_available()
    from ray import tune

    root = resolve_storage(options.storage)
    sweep_dir = resolve_sweep_dir(spec, options, root)
    preflight(trials)
    with sweep_console(sweep_dir, capture=echo is None and not options.verbose) as say:
        echo = echo or say
        connection = runtime.connect(options.address, dashboard_host=options.dashboard_host,
                                     dashboard_port=options.dashboard_port)
        parent_run_id: str | None = None
        try:
            configs = [trial.build_config() for trial in trials]
            check_cluster(configs, root, tracking_uri, cpus_per_worker=spec.resources.cpus_per_worker,
                          gpus_per_worker=spec.resources.gpus_per_worker)
            create_sqlite_store(tracking_uri)
            concurrent = options.max_concurrent or max_concurrent_trials(
                runtime.cluster_resources(), spec.resources, len(trials)
            )
            parent_tags = _parent_tags(configs)
            grid = {trial.name: trial.config_key for trial in trials}
            tracking, parent_run_id = _open_parent(spec, options.resume, tracking_uri, parent_tags, grid)
            record = SweepRecord(spec.name, spec.experiment, tracking_uri, parent_run_id, grid)
            write_sweep_record(sweep_dir, record)
            echo(_start_message(spec, trials, concurrent))
            for line in watch_lines(connection.dashboard_url, tracking_uri, tracking.experiment_id):
                echo(line)
            echo(f"storage: {sweep_dir}")
            settings = TrainSettings(
                storage_path=sweep_dir.child(TRAIN_RUNS).uri, workers=spec.resources.workers,
                cpus_per_worker=spec.resources.cpus_per_worker, gpus_per_worker=spec.resources.gpus_per_worker,
                max_failures=spec.max_failures, knn_every=1 if spec.asha is not None else 0,
            )
            context = TrialContext(tracking_uri, spec.experiment, parent_run_id, settings,
                                   {trial.name: trial.to_param() for trial in trials}, parent_tags[TAG_GIT_COMMIT],
                                   tracking_wait_s=wait_s)
            trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(spec))
            if options.resume:
                echo(f"resuming {sweep_dir}: finished trials are kept, the others continue from their checkpoints")
                tuner = tune.Tuner.restore(sweep_dir.uri, trainable=trainable, resume_errored=True)
            else:
                callback = _tune_callback(sweep_dir)
                tuner = _new_tuner(spec, trials, trainable, root, concurrent, callback)
            events = TrialEvents(echo, {trial.name: int(trial.config["optim"]["epochs"]) for trial in trials})
            for name in finished_earlier(sweep_dir, grid):
                events.ended[name] = "finished"
            with InterruptWatch() as watch, reporting(events):
                results = tuner.fit()
            errors = _errors(results)
            unfinished = [result for result in cast("Iterable[Result]", results)  # iterable through __getitem__
                          if result.error is None and not (result.metrics or {}).get(FINAL_MARK)]
            interrupted = watch.interrupted or (spec.asha is None and bool(unfinished))
            close_unfinished(sweep_dir, grid, "KILLED")
            record.status = "KILLED" if interrupted else ("FAILED" if errors else "FINISHED")
            write_sweep_record(sweep_dir, record)
            markdown, csv_text, rows = summarize_sweep(sweep_dir, grid, sweep_title(spec.name))
            kept_back = any((result.metrics or {}).get(TRACKING_PENDING) for result in cast("Iterable[Result]", results))
            synced = sync_sweep(sweep_dir, record, tracking_uri, markdown, csv_text, rows, wait_s=wait_s, echo=echo,
                                outage_seen=kept_back)
        except BaseException:
            if parent_run_id is not None:
                _mark_failed(tracking, parent_run_id)
            raise
        finally:
            runtime.disconnect()
        comparison = comparison_markdown(rows, sweep_title(spec.name)) if rows else markdown
        return SweepOutcome(spec.name, sweep_dir, tracking_uri, parent_run_id, markdown, comparison, errors,
                            interrupted, None if synced.complete else synced)


def _open_parent(spec: SweepSpec, resume: bool, tracking_uri: str, tags: dict[str, str],
                 grid: dict[str, str]) -> tuple[Any, str]:
    """The sweep's parent run (created, or reused on --resume) with its grid; MLflow must answer here, at the
    start: any failure is one line."""
    from mlflow.exceptions import MlflowException

    from ltray.tracking.artifacts import log_sweep_grid
    from ltray.tracking.journal import limit_http_retries_quietly
    from ltray.tracking.runs import SweepTracking

    limit_http_retries_quietly()
    try:
        tracking = SweepTracking(tracking_uri, spec.experiment)
        if not resume and tracking.find_parent(spec.name) is not None:
            raise ConfigError(
                f"MLflow experiment {spec.experiment!r} already has a sweep named {spec.name!r}; "
                "pass --resume to continue it or choose another --name"
            )
        parent_run_id = tracking.start_parent(spec.name, spec.parameters(), tags)
        log_sweep_grid(tracking.client, parent_run_id, grid)
    except (MlflowException, OSError) as error:
        raise LtrayError(f"MLflow at {tracking_uri} failed at the start of the sweep: "
                         f"{' '.join(str(error).split())[:300]}") from None
    return tracking, parent_run_id


def _mark_failed(tracking: Any, parent_run_id: str) -> None:
    try:
        tracking.finish(parent_run_id, "FAILED")
    except Exception:  # MLflow may be down; the sweep's own error is the one to report
        pass


class InterruptWatch:
    """Tells whether Ctrl-C stopped `tuner.fit()`. Tune replaces the SIGINT handler while it runs and, on the first
    SIGINT, ends the run gracefully and reinstalls the handler it found: the one set here, which then marks the
    sweep as interrupted (a second Ctrl-C raises KeyboardInterrupt as usual)."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None
        self._active = False

    def _handler(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> InterruptWatch:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._active = True
        except ValueError:  # not the main thread: no signal handling
            self._active = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            self.interrupted = signal.getsignal(signal.SIGINT) == self._handler
            signal.signal(signal.SIGINT, self._previous)


def _errors(results: Any) -> list[str]:
    messages = []
    for result in results:
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            name = str(result.config.get("trial", "?")) if result.config else "?"
            messages.append(f"{name}: {text[-1][:300] if text else type(result.error).__name__}")
    return messages
