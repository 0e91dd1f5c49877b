"""The command line shared by the sweep scripts in `experiments/` (each adds its own defaults and flags)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ltray.errors import LtrayError
from ltray.shipped import shipped_config_dir

EXIT_USER_ERROR = 2
CONFIG_DIR = shipped_config_dir()

COMMON_HELP = """
Ray: without --address (or with --address local) Ray starts in this process, its dashboard on
127.0.0.1; --address auto joins the cluster of this node (e.g. one started with
`ray start --head --node-ip-address 127.0.0.1`, or the driver of a `ray job submit`); host:port or ray://host:port
name one. MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; the store is checked
before any training starts. Storage: --storage, else $LTRAY_STORAGE, else ./ray_results (Ray Tune folder of the
sweep, Ray Train run folders and checkpoints; on a cluster of several nodes a path every node mounts, or a URI
such as s3://BUCKET/PREFIX, with credentials in each node's environment). Every trial is one
MLflow child run under the sweep's parent run; the parent gets the summary (mean ± std over splits per
configuration); `ltray report --sweep NAME` prints it again. --dry-run prints the trials, their resources and the
expected cost (from ltray/cluster/throughput.json) and starts nothing; docs/reproduce.md lists the paper recipes.
"""


def build_parser(prog: str, description: str, default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=COMMON_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None,
                        help=f"sweep YAML: base run config, overrides, axes (default {default_config.name})")
    parser.add_argument("--set", "-s", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value of the base config, e.g. --set optim.epochs=50 (repeatable)")
    parser.add_argument("--axis", dest="axes", action="append", default=[], metavar="KEY=V1,V2",
                        help="add or replace a grid axis, e.g. --axis method.temperature=0.1,0.2 (repeatable)")
    parser.add_argument("--splits", help="long-tail splits to run, e.g. 1,2,3 (the data.split axis)")
    parser.add_argument("--seeds", help="seeds to run, e.g. 10,11 (the run.seed axis)")
    parser.add_argument("--data", help="data set name (data.dataset): scenes-lt, digits-lt, cifar10, cifar100")
    parser.add_argument("--data-root", help="data set folder (data.root), e.g. a torchvision CIFAR folder")
    parser.add_argument("--name", help="sweep name (default: the config's name plus a timestamp)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the config's)")
    parser.add_argument("--address", help="Ray cluster: auto, local (default), host:port or ray://host:port")
    parser.add_argument("--dashboard-host", default="127.0.0.1",
                        help="interface of the dashboard of a Ray started here (default 127.0.0.1; 0.0.0.0 exposes "
                             "it to the network)")
    parser.add_argument("--dashboard-port", type=int, help="port of that dashboard (default 8265)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI: http(s)://..., sqlite:///abs/path.db, ...")
    parser.add_argument("--storage", help="root of sweep results and checkpoints: a path or a URI (s3://, gs://, ...; "
                                          "default ./ray_results)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's and Tune's own output (trial tables, worker logs) on the console too; "
                             "by default it goes to console.log in the sweep folder")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep (the newest of that name, or --name): finished trials "
                             "are not run again, the others continue from their last checkpoint")
    parser.add_argument("--workers-per-trial", type=int,
                        help="Ray Train workers (DDP processes) per trial; 0 trains in the Tune trial's own process (no "
                             "Ray Train worker group: less start-up on small CPU trials)")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs each training worker holds")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs each training worker holds (0: CPU training)")
    parser.add_argument("--max-failures", type=int, help="worker failures a trial survives (resuming from its "
                                                         "last checkpoint)")
    parser.add_argument("--max-concurrent", type=int,
                        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    parser.add_argument("--asha", action="store_true",
                        help="stop weak trials early (ASHA on the per-epoch kNN accuracy)")
    dry = parser.add_argument_group("dry run")
    dry.add_argument("--dry-run", action="store_true",
                     help="print the trials, their resources and the expected cost (images, hours from measured "
                          "throughput), then exit; starts neither Ray nor MLflow and reads no image data")
    dry.add_argument("--cluster-cpus", type=float, help="with --dry-run: the cluster's CPUs (default this machine's)")
    dry.add_argument("--cluster-gpus", type=float, help="with --dry-run: the cluster's GPUs (default this machine's)")
    dry.add_argument("--gpu-kind", default="nvidia-h100",
                     help="with --dry-run: the GPU whose measured throughput prices GPU trials (default nvidia-h100)")
    return parser


def spec_from_args(args: argparse.Namespace, config: Path, extra_sets: Sequence[str] = ()) -> Any:
    """The SweepSpec the flags describe (flags win over the YAML)."""
    from dataclasses import replace

    from ltray.cluster.grid import AshaSettings, load_sweep_spec, parse_axis, parse_int_list

    sets = list(extra_sets)
    if args.data:
        sets.append(f"data.dataset={args.data}")
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    sets += args.sets
    axes: dict[str, list[Any]] = {}
    for text in args.axes:
        key, values = parse_axis(text)
        axes[key] = values
    if args.splits:
        axes["data.split"] = list(parse_int_list(args.splits, "--splits"))
    if args.seeds:
        axes["run.seed"] = list(parse_int_list(args.seeds, "--seeds"))
    spec = load_sweep_spec(config, sets=sets, axes=axes, name=args.name, experiment=args.experiment)
    flags = {"workers": args.workers_per_trial, "cpus_per_worker": args.cpus_per_worker,
             "gpus_per_worker": args.gpus_per_worker}
    spec.resources = replace(spec.resources, **{key: value for key, value in flags.items() if value is not None})
    if args.max_failures is not None:
        spec = replace(spec, max_failures=args.max_failures)
    if args.asha and spec.asha is None:
        spec.asha = AshaSettings()
    return spec


def dry_run_report(args: argparse.Namespace, spec: Any, config: Path) -> str:
    """The `--dry-run` text (`ltray.cluster.dryrun.describe`) for the parsed flags."""
    from ltray.cluster.dryrun import describe

    cluster = None
    if args.cluster_cpus is not None or args.cluster_gpus is not None:
        cluster = {"CPU": args.cluster_cpus or 0.0, "GPU": args.cluster_gpus or 0.0}
        if min(cluster.values()) < 0:
            raise LtrayError("--cluster-cpus and --cluster-gpus must be >= 0")
    return describe(spec, config_path=Path(config).resolve(), max_concurrent=args.max_concurrent, cluster=cluster,
                    gpu_kind=args.gpu_kind)


def run_script(
    prog: str,
    description: str,
    default_config: Path,
    argv: Sequence[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    extra_sets: Callable[[argparse.Namespace], list[str]] | None = None,
    dataset_configs: Mapping[str, Path] | None = None,
    after_sweep: Callable[[argparse.Namespace, Any, float], None] | None = None,
) -> int:
    """Parse the flags, run the sweep, print the comparison table (with --dry-run: print the plan and its cost,
    start nothing). `after_sweep(args, outcome, wall_seconds)` runs once every trial finished. User errors: one
    line on stderr, exit 2."""
    parser = build_parser(prog, description, default_config)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise LtrayError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
        config = args.config or (dataset_configs or {}).get(args.data or "", default_config)
        spec = spec_from_args(args, config, extra_sets(args) if extra_sets else [])
        if args.dry_run:
            print(dry_run_report(args, spec, config))
            return 0
        from ltray.cluster.sweep import SweepOptions, run_sweep

        options = SweepOptions(address=args.address, mlflow_uri=args.mlflow_uri, storage=args.storage,
                               resume=args.resume, max_concurrent=args.max_concurrent, timestamp_name=not args.name,
                               dashboard_host=args.dashboard_host, dashboard_port=args.dashboard_port,
                               verbose=args.verbose)
        started = time.monotonic()
        outcome = run_sweep(spec, options)
        if after_sweep is not None and outcome.exit_code == 0:
            after_sweep(args, outcome, time.monotonic() - started)
    except LtrayError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"summary (every probe's table): {outcome.sweep_dir.child('summary.md')}; MLflow parent run "
          f"{outcome.parent_run_id} ({outcome.tracking_uri}); again with: ltray report --sweep {outcome.name} "
          f"--mlflow-uri {outcome.tracking_uri}")
    if not args.verbose:
        from ltray.cluster.console import CONSOLE_LOG

        print(f"Ray's and Tune's own output: {outcome.sweep_dir.child(CONSOLE_LOG)} (-v shows it here)")
    print()
    print(outcome.comparison)
    for failure in outcome.errors:
        print(f"{prog}: trial failed: {failure}", file=sys.stderr)
    if outcome.interrupted:
        print(f"{prog}: interrupted; continue with --resume --name {outcome.name}", file=sys.stderr)
    if outcome.tracking_pending is not None:
        print(f"{prog}: error: {tracking_pending_line(outcome)}", file=sys.stderr)
    return outcome.exit_code


def tracking_pending_line(outcome: Any) -> str:
    """One line for a sweep whose records did not all reach MLflow: the server, where they wait, the command that
    sends them."""
    pending = outcome.tracking_pending
    what = f"{len(pending.pending)} trial run(s)" if pending.pending else "the sweep's summary"
    return (f"MLflow at {outcome.tracking_uri} did not answer ({pending.reason}); {what} not fully recorded, kept "
            f"in {outcome.sweep_dir.child('tracking')}; send them later with: ltray sync --sweep {outcome.name} "
            f"--storage {outcome.sweep_dir.parent} --mlflow-uri {outcome.tracking_uri}")
