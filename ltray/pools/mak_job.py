"""`ltray mak sample`: MAK's offline open-world sampling end to end (Jiang et al., "Improving Contrastive Learning
on Imbalanced Seed Data via Open-World Sampling", NeurIPS 2021; docs/math/mak.md §1–§9).

1. Inference passes with Ray Data (`ltray.pools.scoring`): (a) pool f and ẑ, (b) the ID training set's f,
   (c) R augmented passes over the pool (one SimCLR training view each).
2. ECLE tailness (§3), proximity to the ID k-means centres (§4), score, core set and K-center greedy (§5–§6), all
   from `ltray.select.mak`.
3. The selection folder (`ltray.data.selection`, §7), written atomically and never overwritten, and optionally an
   MLflow run with the parameters and score histograms.

Embeddings, ECLE and distances are cached under a hash of their inputs and parameters (§9) in
`$LTRAY_CACHE/mak` (default `~/.cache/ltray/mak`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ltray.config import Config
from ltray.data.pool_store import file_sha256, read_pool_arrays, read_pool_info, read_pool_items, verify_pool
from ltray.data.selection import (
    LIST_NAME,
    MANIFEST_NAME,
    SELECTION_FORMAT,
    TABLE_NAME,
    selected_list,
    selection_table,
    write_selection_folder,
)
from ltray.errors import ConfigError, DataError
from ltray.pools.scoring import (
    CheckpointModel,
    PoolScores,
    ScoringJob,
    ScoringSpec,
    embed_pool,
    load_scoring_model,
    read_scores,
    score_arrays,
    score_pool,
)
from ltray.ray_runtime import ray_session
from ltray.select.kmeans import backend_name
from ltray.select.mak import ecle, mak_run_name, mak_scores, mak_select, proximity
from ltray.storage import atomic_file

if TYPE_CHECKING:
    from ltray.data.sources import ImageListSource

SCORES_FILE = "scores.npz"
HISTOGRAMS = {"ecle": "hist_ecle.png", "distance": "hist_distance.png", "score": "hist_score.png"}
MLFLOW_EXPERIMENT = "ltray-mak"


def mak_cache_dir() -> Path:
    """`$LTRAY_CACHE/mak`, else `~/.cache/ltray/mak`."""
    return Path(os.environ.get("LTRAY_CACHE") or Path.home() / ".cache" / "ltray") / "mak"


def cache_key(record: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description of inputs and parameters."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def images_sha256(images: np.ndarray) -> str:
    """sha256 over an image array's shape and bytes."""
    digest = hashlib.sha256(f"{images.dtype.str}|{images.shape}|".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def list_sha256(source: Any) -> str:
    """sha256 over an image list's roots and items (paths, labels, sources): the identity of list ID data."""
    digest = hashlib.sha256()
    for part in (str(source.root), json.dumps({k: str(v) for k, v in sorted(source.source_roots.items())}),
                 json.dumps(list(source.items.paths)), json.dumps(source.labels.tolist()),
                 json.dumps(list(source.items.sources or ()))):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _say(message: str) -> None:
    print(f"ltray mak: {message}", file=sys.stderr, flush=True)


def _cached_vector(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """A float vector cached as `.npy` at `path`: loaded when readable, else computed and stored atomically."""
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as stream:
        np.save(stream, values)
    return values


def _cached_scores(
    folder: Path, run: Callable[[], PoolScores], expected_size: int, expected_passes: int
) -> PoolScores:
    if folder.exists():
        try:
            return read_scores(folder, expected_size=expected_size, expected_passes=expected_passes)[0]
        except DataError as error:
            _say(f"cached scores at {folder} are unusable ({error}); recomputing")
            shutil.rmtree(folder)
    return run()


def _histogram_writer(values: np.ndarray, selected: np.ndarray, title: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.0, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        bins = np.histogram_bin_edges(values, bins=50)
        # matplotlib's stubs type `bins` as a Sequence[float], which an ndarray is not; matplotlib takes arrays
        axes.hist(values, bins=bins, color="tab:gray", alpha=0.6, label=f"pool ({values.size})")  # type: ignore[arg-type]
        axes.hist(values[selected], bins=bins, color="tab:blue", alpha=0.8,  # type: ignore[arg-type]
                  label=f"selected ({int(selected.sum())})")
        axes.set_title(title)
        axes.set_ylabel("candidates")
        axes.legend(loc="upper right")
        figure.savefig(path, format="png")

    return write


def _scores_writer(index: np.ndarray, arrays: Mapping[str, np.ndarray]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as stream:
            np.savez(stream, pool_index=index, **arrays)  # type: ignore[arg-type]

    return write


def _log_mlflow(
    tracking_uri: str, name: str, manifest: Mapping[str, Any], folder: Path, metrics: Mapping[str, float]
) -> str:
    """One MLflow run (experiment `ltray-mak`) with the selection's parameters, summary metrics, the score
    histograms, the manifest and the selection table."""
    from mlflow.entities import Param

    from ltray.tracking.runs import SweepTracking, flatten_config, log_metrics, standard_tags

    tracking = SweepTracking(tracking_uri, MLFLOW_EXPERIMENT)
    client = tracking.client
    tags = standard_tags("mak", str(manifest["split"]), str(manifest["dataset"]), reference_backed=True)
    run_id = client.create_run(tracking.experiment_id, run_name=name, tags=tags).info.run_id
    try:
        logged = {key: value for key, value in manifest.items() if key not in ("positions", "format", "files")}
        params = [Param(key, value) for key, value in flatten_config(logged).items()]
        for lo in range(0, len(params), 100):
            client.log_batch(run_id, params=params[lo : lo + 100])
        log_metrics(client, run_id, metrics)
        for file_name in (*HISTOGRAMS.values(), MANIFEST_NAME, TABLE_NAME):
            client.log_artifact(run_id, str(folder / file_name))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def mak_sample(
    cfg: Config,
    checkpoint: str | Path,
    pool: str | Path,
    out: str | Path,
    budget: int,
    passes: int = 10,
    actors: int = 1,
    mlflow_uri: str | None = None,
    *,
    num_cpus_per_actor: float = 0.5,
    num_gpus_per_actor: float = 0.0,
    cache_dir: str | Path | None = None,
    in_process: bool = False,
) -> Path:
    """Select `budget` candidates of a pool folder with MAK and write the selection folder `out` (returned).

    `cfg` names the ID data (data set, split, subset: pass (b) embeds `load_run_data(cfg).train.id_images`), the
    augmentation preset and seed (`data.aug_preset`, `run.seed`), the device for ECLE (`run.device`) and the
    sampling parameters (`method.mak`, docs/math/mak.md §8); `checkpoint` is the SimCLR feature extractor; `passes`
    is R; `actors` the Ray Data scoring actors, each of `num_cpus_per_actor` CPUs and `num_gpus_per_actor` GPUs.
    `in_process` runs the inference passes as a plain loop in this process instead of a Ray Data job (a sweep trial
    that trains in its own process and already holds its CPUs: a Ray job would wait for more).
    """
    from ltray.data.loading import load_run_data
    from ltray.evaluate import model_from_checkpoint
    from ltray.train.loop import select_device

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} already exists; a MAK selection is never overwritten")
    tracking_uri = None
    if mlflow_uri is not None:
        from ltray.tracking.store import check_tracking_reachable, create_sqlite_store, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(mlflow_uri, Path.cwd())
        check_tracking_reachable(tracking_uri)
        create_sqlite_store(tracking_uri)
    if isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"the MAK budget must be >= 1, got {budget}")
    if passes < 2:
        raise ConfigError(f"ECLE needs at least R = 2 augmented passes, got {passes}")
    if actors < 1:
        raise ConfigError(f"the number of scoring actors must be >= 1, got {actors}")
    checkpoint_path = Path(checkpoint).resolve()
    model_from_checkpoint(cfg, checkpoint_path, torch.device("cpu"))
    checkpoint_sha = file_sha256(checkpoint_path)
    info = read_pool_info(pool)
    verify_pool(info)
    if budget > info.size:
        raise ConfigError(f"the MAK budget {budget} exceeds the pool size {info.size}")
    run_data = load_run_data(cfg)
    id_images = run_data.train.id_images
    if run_data.is_list:
        id_shape = (run_data.image_size, run_data.image_size, 3)
        id_identity = list_sha256(id_images)
    else:
        id_array = cast(np.ndarray, id_images)  # array data
        id_shape, id_identity = tuple(id_array.shape[1:]), images_sha256(id_array)
    if id_shape != info.image_shape:
        raise DataError(
            f"pool images are {info.image_shape}, the ID images {id_shape}; import the pool with a matching --size"
        )
    cache = Path(cache_dir) if cache_dir is not None else mak_cache_dir()
    source = CheckpointModel(str(checkpoint_path), cfg.to_dict())
    job: ScoringJob = {"actors": actors, "num_cpus": num_cpus_per_actor, "num_gpus": num_gpus_per_actor}
    params = cfg.method.mak
    pool_spec = ScoringSpec(True, passes, cfg.run.seed, cfg.data.aug_preset, params.scoring_batch)
    id_spec = ScoringSpec(True, 0, cfg.run.seed, cfg.data.aug_preset, params.scoring_batch)
    pool_key = cache_key({"checkpoint": checkpoint_sha, "pool": info.content_sha256, "spec": asdict(pool_spec)})
    id_key = cache_key({"checkpoint": checkpoint_sha, "images": id_identity, "spec": asdict(id_spec)})

    # pass (b) on an image list runs here through the list loader (inference transform), whatever the mode
    model = load_scoring_model(source, select_device(cfg.run.device)) if in_process or run_data.is_list else None
    if in_process:
        assert model is not None
        # the same computation as the Ray Data job, row for row (`embed_pool`), in this process
        _say(f"pass (a)+(c) in this process: pool {info.path} ({info.size} items), R = {passes}")
        pool_scores = embed_pool(model, read_pool_arrays(info.path, verify=False).images, pool_spec)
    else:
        with ray_session():
            _say(f"pass (a)+(c): pool {info.path} ({info.size} items), R = {passes}")
            pool_scores = _cached_scores(
                cache / "scores" / pool_key,
                lambda: score_pool(info.path, source, pool_spec, cache / "scores" / pool_key, **job),
                info.size, passes,
            )
            if not run_data.is_list:
                _say(f"pass (b): ID training set ({len(id_images)} images)")
                id_scores = _cached_scores(
                    cache / "scores" / id_key,
                    lambda: score_arrays(cast(np.ndarray, id_images), source, id_spec, cache / "scores" / id_key, **job),
                    len(id_images), 0,
                )
    if run_data.is_list:
        from ltray.data.list_data import source_features

        _say(f"pass (b) in this process: ID training list ({len(id_images)} images)")
        assert model is not None
        features = source_features(model.backbone, cast("ImageListSource", id_images), image_size=run_data.image_size,
                                   workers=cfg.data.loader_workers)
        id_scores = PoolScores(index=np.arange(len(id_images), dtype=np.int64), features=features.numpy())
    elif in_process:
        _say(f"pass (b) in this process: ID training set ({len(id_images)} images)")
        assert model is not None
        id_scores = embed_pool(model, cast(np.ndarray, id_images), id_spec)
    assert pool_scores.features is not None and id_scores.features is not None

    device = select_device(cfg.run.device)
    ecle_record = {"scores": pool_key, "Q": params.regroupings, "B_E": params.ecle_batch,
                   "tau_E": params.ecle_temperature, "seed": params.ecle_seed}
    _say(f"ECLE over {passes * (passes - 1) // 2} pass pairs x {params.regroupings} regroupings")
    ecle_values = _cached_vector(
        cache / "ecle" / f"{cache_key(ecle_record)}.npy",
        lambda: ecle([torch.from_numpy(z).to(device) for z in pool_scores.aug_projections], params.ecle_batch,
                     params.ecle_temperature, params.regroupings, params.ecle_seed),
    )
    distance_record = {"pool": pool_key, "id": id_key, "K_p": params.clusters, "seed": params.kmeans_seed}
    distance = _cached_vector(
        cache / "distance" / f"{cache_key(distance_record)}.npy",
        lambda: proximity(cast(np.ndarray, id_scores.features), cast(np.ndarray, pool_scores.features),  # asserted
                          params.clusters, params.kmeans_seed),
    )
    _say("score, core set and K-center greedy")
    positions = mak_select(ecle_values, distance, pool_scores.features, id_scores.features, budget,
                           params.loss_weight, params.core_ratio)
    scores = mak_scores(ecle_values, distance, params.loss_weight)

    name = mak_run_name(params.loss_weight, passes, params.clusters, params.core_ratio, budget, cfg.run.seed)
    labels, paths, sources = read_pool_items(info.path)
    from_list = info.source.get("kind") == "list"
    manifest: dict[str, Any] = {
        "format": SELECTION_FORMAT,
        "name": name,
        "pool": str(info.path.resolve()),
        "pool_sha256": info.content_sha256,
        "pool_size": info.size,
        "pool_source": info.source,
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": checkpoint_sha,
        "dataset": cfg.data.dataset,
        "split": cfg.data.split,
        "subset": cfg.data.subset,
        "num_id": int(len(id_images)),
        "budget": budget,
        "selected": int(positions.size),
        "R": passes,
        "Q": params.regroupings,
        "K_p": params.clusters,
        "w": params.loss_weight,
        "core_ratio": params.core_ratio,
        "B_E": params.ecle_batch,
        "B_E_used": min(params.ecle_batch, info.size),
        "tau_E": params.ecle_temperature,
        "seeds": {"run": cfg.run.seed, "augmentation": cfg.run.seed, "ecle": params.ecle_seed,
                  "kmeans": params.kmeans_seed},
        "kmeans_backend": backend_name(10),
        "aug_preset": cfg.data.aug_preset,
        "scoring_batch": params.scoring_batch,
        "cache": {"pool_scores": pool_key, "id_scores": id_key, "ecle": cache_key(ecle_record),
                  "distance": cache_key(distance_record)},
        "files": {"table": TABLE_NAME, "list": LIST_NAME if from_list else None, "scores": SCORES_FILE,
                  "histograms": HISTOGRAMS},
        "positions": positions.tolist(),
    }
    selected = np.zeros(info.size, dtype=bool)
    selected[positions] = True
    files: dict[str, Any] = {
        MANIFEST_NAME: json.dumps(manifest, indent=2) + "\n",
        TABLE_NAME: selection_table(positions, scores, labels, paths),
        SCORES_FILE: _scores_writer(pool_scores.index, {"ecle": ecle_values, "distance": distance, "score": scores}),
        HISTOGRAMS["ecle"]: _histogram_writer(ecle_values, selected, "ECLE (tailness)"),
        HISTOGRAMS["distance"]: _histogram_writer(distance, selected, "cosine distance to the nearest ID centre"),
        HISTOGRAMS["score"]: _histogram_writer(scores, selected, f"score (w = {params.loss_weight})"),
    }
    if from_list:
        files[LIST_NAME] = selected_list(positions, labels, paths, sources)
    folder = write_selection_folder(target, files)
    _say(f"selected {positions.size} of {info.size} candidates: {folder}")
    if tracking_uri is not None:
        metrics = {"selected": float(positions.size), "ecle_mean": float(ecle_values.mean()),
                   "ecle_selected_mean": float(ecle_values[positions].mean()),
                   "distance_mean": float(distance.mean()), "distance_selected_mean": float(distance[positions].mean())}
        run_id = _log_mlflow(tracking_uri, name, manifest, folder, metrics)
        _say(f"logged to MLflow run {run_id}")
    return folder
