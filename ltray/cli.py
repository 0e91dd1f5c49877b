"""The `ltray` command line: splits, pretrain, eval, report, pool, mak."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from ltray.config import MakConfig
from ltray.errors import ConfigError, LtrayError
from ltray.method_names import parse_method

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (see ltray/configs/)")
    p.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set method.name=sdclr+gh --set optim.epochs=20 (repeatable)",
    )


def _load(args: argparse.Namespace):
    from ltray.config import load_config
    from ltray.methods import components  # noqa: F401  (registers every method part and its config section)

    return load_config(args.config, args.overrides)


# ----- splits ---------------------------------------------------------------------------------------------------
def cmd_splits_make(args: argparse.Namespace) -> int:
    from ltray.splits_cli import make_splits

    for path in make_splits(args.dataset, args.out, labels=args.labels, splits=args.splits, seed=args.seed,
                            imbalance=args.imbalance, n_max=args.n_max, val_per_class=args.val_per_class,
                            overwrite=args.overwrite):
        print(path)
    return 0


def cmd_splits_show(args: argparse.Namespace) -> int:
    from ltray.splits_cli import show_split

    print(show_split(args.directory, args.dataset, args.split))
    return 0


def cmd_splits_import(args: argparse.Namespace) -> int:
    from ltray.splits_cli import import_published

    for path in import_published(args.source, args.dataset, args.out, labels=args.labels, overwrite=args.overwrite):
        print(path)
    return 0


# ----- training and evaluation --------------------------------------------------------------------------------
def cmd_pretrain(args: argparse.Namespace) -> int:
    from ltray.train.loop import pretrain

    if args.extra_data:
        args.overrides.append(f"data.extra_data={args.extra_data}")
    cfg = _load(args)
    if parse_method(cfg.method.name).has("mak") and not cfg.data.extra_data:
        raise ConfigError("method mak is a pipeline: `ltray mak sample` on a SimCLR checkpoint, then `ltray pretrain "
                          "--set method.name=mak --extra-data SELECTION`; or a sweep trial of method mak runs it all")
    result = pretrain(cfg, resume=args.resume)
    last = result.history[-1] if result.history else {}
    print(f"checkpoint: {result.checkpoint}")
    if last:
        print(f"final epoch {int(last['epoch'])}: loss {last['loss']:.4f}, {last['images_per_s']:.0f} img/s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ltray.evaluate import evaluate_checkpoint, format_report

    cfg = _load(args)
    report = evaluate_checkpoint(cfg, args.checkpoint, published=args.published, out=args.out)
    print(format_report(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.sweep:
        from ltray.tracking.artifacts import fetch_sweep_summary
        from ltray.tracking.store import resolve_tracking_uri

        print(fetch_sweep_summary(resolve_tracking_uri(args.mlflow_uri, Path.cwd()), args.sweep))
        return 0
    from ltray.evaluate import summarize_report_files

    if not args.files:
        raise LtrayError("give --sweep NAME or one or more eval report JSON files")
    print(summarize_report_files([Path(f) for f in args.files]))
    return 0


# ----- pools and MAK ------------------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    """`ltray sync`: every trial journal of the sweep, then its summary and status, to MLflow; exit 3 (one line)
    while MLflow does not answer."""
    from ltray.cluster.sweep import EXIT_TRACKING_PENDING, summarize_sweep
    from ltray.eval.summary import sweep_title
    from ltray.storage import resolve_storage
    from ltray.tracking.store import check_tracking_reachable, resolve_tracking_uri
    from ltray.tracking.sync import close_unfinished, read_sweep_record, sync_sweep

    sweep_dir = resolve_storage(args.storage).child(args.sweep)
    record = read_sweep_record(sweep_dir)
    uri = resolve_tracking_uri(args.mlflow_uri or record.tracking_uri, Path.cwd())
    closed = close_unfinished(sweep_dir, record.grid, "KILLED")
    markdown, csv_text, rows = summarize_sweep(sweep_dir, record.grid, sweep_title(record.name))
    try:
        check_tracking_reachable(uri)
    except LtrayError as error:
        if args.wait <= 0:
            print(f"ltray: error: {error}; nothing sent, run ltray sync again when it answers", file=sys.stderr)
            return EXIT_TRACKING_PENDING
    record.tracking_uri = uri
    result = sync_sweep(sweep_dir, record, uri, markdown, csv_text, rows, wait_s=args.wait, echo=print)
    if not result.complete:
        print(f"ltray: error: MLflow at {uri} did not answer ({result.reason}); {len(result.pending)} trial run(s) "
              "still to send; run ltray sync again when it answers", file=sys.stderr)
        return EXIT_TRACKING_PENDING
    closing = f"; {len(closed)} run(s) that never ended closed as KILLED" if closed else ""
    print(f"sweep {record.name}: {len(result.sent)} trial run(s) and the summary are in MLflow at {uri}{closing}")
    return 0


def cmd_pool_import(args: argparse.Namespace) -> int:
    from ltray.data.pool_store import import_pool

    roots = {}
    for item in args.source_root or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--source-root expects NAME=PATH (e.g. places=/data/places365), got {item!r}")
        roots[name] = folder
    path = import_pool(args.source, args.out, kind=args.kind, root=args.root, size=args.size,
                       shard_rows=args.shard_rows, overwrite=args.overwrite, source_roots=roots)
    print(path)
    return 0


def cmd_pool_show(args: argparse.Namespace) -> int:
    from ltray.data.pool_store import show_pool

    print(show_pool(args.pool, grid=args.grid))
    return 0


def cmd_mak_sample(args: argparse.Namespace) -> int:
    from ltray.pools import mak_job
    from ltray.tracking.store import resolve_tracking_uri

    args.overrides += [f"method.mak.{f.name}={getattr(args, f.name)}" for f in dataclasses.fields(MakConfig)
                       if "flag" in f.metadata and getattr(args, f.name) is not None]
    cfg = _load(args)
    if args.no_mlflow and args.mlflow_uri:
        raise ConfigError("--no-mlflow and --mlflow-uri exclude each other")
    uri = None if args.no_mlflow else resolve_tracking_uri(args.mlflow_uri, Path.cwd())
    out = mak_job.mak_sample(cfg, checkpoint=args.checkpoint, pool=args.pool, out=args.out, budget=args.budget,
                             passes=args.passes, actors=args.actors, mlflow_uri=uri)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltray",
        description="Self-supervised learning on long-tailed data: splits, pre-training, evaluation, pools, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    splits = sub.add_parser("splits", help="make, show or import long-tail split files")
    ssub = splits.add_subparsers(dest="splits_command", required=True)
    make = ssub.add_parser("make", help="generate LT splits (D_i, D_b, S_b, train_full, val) from train labels")
    make.add_argument("--dataset", required=True, help="cifar10, cifar100, scenes-lt, digits-lt or a new name")
    make.add_argument("--labels", help="int64 .npy train labels (CIFAR and new data sets); embedded sets need none")
    make.add_argument("--out", required=True, help="output folder (an existing split there is never overwritten)")
    make.add_argument("--splits", type=int, default=5, help="number of splits (default 5)")
    make.add_argument("--seed", type=int, default=0, help="base seed; split k uses seed + k (default 0)")
    make.add_argument("--imbalance", type=float, default=100.0, help="imbalance ratio rho >= 1 (default 100)")
    make.add_argument("--n-max", type=int, help="head-class count (default: the data set's)")
    make.add_argument("--val-per-class", type=int, help="validation hold-out per class (default: the data set's)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing split of the same name")
    make.set_defaults(func=cmd_splits_make)
    show = ssub.add_parser("show", help="print a split's manifest summary (counts, order, files)")
    show.add_argument("directory")
    show.add_argument("--dataset", required=True)
    show.add_argument("--split", type=int, default=1)
    show.set_defaults(func=cmd_splits_show)
    imp = ssub.add_parser("import", help="import published SDCLR split files into ltray's format")
    imp.add_argument("source", help="the published split folder (e.g. SDCLR's split/)")
    imp.add_argument("--dataset", required=True, choices=["cifar10", "cifar100"])
    imp.add_argument("--labels", required=True, help="int64 .npy CIFAR train labels in torchvision order")
    imp.add_argument("--out", required=True)
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=cmd_splits_import)

    pre = sub.add_parser("pretrain", help="contrastive pre-training of one method on one split (single process)")
    _add_config_args(pre)
    pre.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    pre.add_argument("--extra-data", help="a MAK selection (`ltray mak sample` output) added to the training set")
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="linear probes (full-shot, few-shot, k-shot) and Many/Medium/Few of a checkpoint")
    _add_config_args(ev)
    ev.add_argument("--checkpoint", required=True, help="an ltray checkpoint, or a published one with --published")
    ev.add_argument("--published", action="store_true", help="the checkpoint comes from the SDCLR/COLT/MAK code")
    ev.add_argument("--out", help="write the report JSON here, a new file (default: beside the checkpoint, "
                                  "<name>_eval.json, else <name>_eval_<protocol>.json, else ..._2.json, ...)")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="summary table (mean ± std over splits) of a sweep or of eval reports")
    rep.add_argument("files", nargs="*", help="eval report JSON files")
    rep.add_argument("--sweep", help="sweep name in MLflow")
    rep.add_argument("--mlflow-uri", help="tracking URI (default: sqlite mlflow.db in the current folder)")
    rep.set_defaults(func=cmd_report)

    sync = sub.add_parser("sync", help="send what a sweep recorded while MLflow was unreachable (idempotent)")
    sync.add_argument("--sweep", required=True, help="the sweep's name (its folder under the storage root)")
    sync.add_argument("--storage", help="the sweep's storage root: a path or a URI (default: $LTRAY_STORAGE, else "
                                        "./ray_results)")
    sync.add_argument("--mlflow-uri", help="tracking URI (default: the one the sweep used)")
    sync.add_argument("--wait", type=float, default=0.0,
                      help="seconds to keep trying while MLflow does not answer (default 0: one attempt)")
    sync.set_defaults(func=cmd_sync)

    pool = sub.add_parser("pool", help="import or inspect unlabeled pools")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    pimp = psub.add_parser("import", help="convert a pool source into Parquet shards")
    pimp.add_argument("source", help="a uint8 N x H x W x 3 .npy, a list file, or 'embedded'")
    pimp.add_argument("--kind", choices=["npy", "list", "embedded"], help="source kind (default: from the name)")
    pimp.add_argument("--root", help="image root for a list file")
    pimp.add_argument("--source-root", action="append", metavar="NAME=PATH",
                      help="image root of the list lines whose third field is NAME (e.g. places=/data/places365, "
                           "for MAK's ImageNet+Places mix); repeatable")
    pimp.add_argument("--size", type=int, help="resize list images to SIZE x SIZE")
    pimp.add_argument("--out", required=True, help="output pool folder (never overwritten unless --overwrite)")
    pimp.add_argument("--shard-rows", type=int, default=4096)
    pimp.add_argument("--overwrite", action="store_true")
    pimp.set_defaults(func=cmd_pool_import)
    pshow = psub.add_parser("show", help="print a pool's size and shape; write a grid image of random items")
    pshow.add_argument("pool")
    pshow.add_argument("--grid", help="write a PNG grid of 64 random items here")
    pshow.set_defaults(func=cmd_pool_show)

    mak = sub.add_parser("mak", help="MAK: model-aware K-center sampling of an external pool")
    msub = mak.add_subparsers(dest="mak_command", required=True)
    ms = msub.add_parser("sample", help="score a pool (ECLE, proximity) with Ray Data and select `budget` items")
    _add_config_args(ms)
    ms.add_argument("--checkpoint", required=True, help="the SimCLR feature extractor (ltray checkpoint)")
    ms.add_argument("--pool", required=True, help="pool folder made by `ltray pool import`")
    ms.add_argument("--out", required=True, help="output folder for the selection list and manifest")
    ms.add_argument("--budget", type=int, required=True)
    ms.add_argument("--passes", type=int, default=10, help="augmented passes R for ECLE (default 10)")
    ms.add_argument("--actors", type=int, default=1, help="Ray Data scoring actors (default 1)")
    for f in (f for f in dataclasses.fields(MakConfig) if "flag" in f.metadata):  # a flag sets method.mak.<field>
        ms.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default),
                        help=f"{f.metadata['flag']} (default {f.default})")
    ms.add_argument("--mlflow-uri", help="tracking URI of the run that logs the parameters, score histograms and "
                                         "selection (default: $MLFLOW_TRACKING_URI, else sqlite mlflow.db here)")
    ms.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    ms.set_defaults(func=cmd_mak_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LtrayError as exc:
        print(f"ltray: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ltray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
