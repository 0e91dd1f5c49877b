"""Embedded data sets built only from images bundled inside installed packages (nothing is downloaded).

- `scenes-lt` (the default data set): 16x16 natural-image patches, one class per photograph bundled with
  scikit-image. Each photograph is cut into a grid of blocks; a seeded fifth of the blocks is the test area and
  the rest the train area, and every patch lies inside one block shrunk by a margin, so train and test patches
  never overlap. Patches are cut 32, 48 or 64 pixels wide, box-averaged down to 16x16 and rejected when
  near-constant.
- `digits-lt`: scikit-learn's handwritten digits, upsampled from 8x8 to 16x16 RGB, with a stratified seeded
  train/test split.
- `embedded_pool`: random patches of the bundled photographs that are not scenes-lt classes (COLT's OOD pool in
  the spirit of 300K Random Images, colt.md §2), labels −1.

scenes-lt and digits-lt are integer arithmetic on losslessly decoded PNGs (or scikit-learn's digit levels) with
NumPy's frozen legacy random stream, so a build is bit-identical across machines; the sha256 of the arrays is
checked against the reference build that the shipped splits (ltray/splits/<name>/) index into. Built arrays are
cached under `$LTRAY_CACHE` or `~/.cache/ltray`, keyed by a hash of the build parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ltray.data.sources import ArraySource
from ltray.data.splits import Split, read_split
from ltray.errors import DataError
from ltray.storage import atomic_file

BUILD_VERSION = 1
PATCH_SIDE = 16
CLASS_PATCH_SIDES = (32, 48, 64)
POOL_PATCH_SIDES = (32, 48, 64, 96, 128)
BLOCK_TARGET_SIDE = 128
TEST_BLOCK_FRACTION = 0.2
BLOCK_MARGIN = 4
MIN_PATCH_STD = 8.0
MAX_ATTEMPTS_PER_PATCH = 50

# name: (package, file inside the package)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "brick": ("skimage", "data/brick.png"),
    "camera": ("skimage", "data/camera.png"),
    "cell": ("skimage", "data/cell.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "clock_motion": ("skimage", "data/clock_motion.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "coins": ("skimage", "data/coins.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "moon": ("skimage", "data/moon.png"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "page": ("skimage", "data/page.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "text": ("skimage", "data/text.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}

# Natural photographs considered as scenes-lt classes (graphics such as the colour wheel, the logo, the chessboards
# and the phantom are used nowhere); `select_scenes_classes` documents how SCENES_CLASSES was chosen among them.
SCENES_CANDIDATES = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee", "coins",
    "grass", "gravel", "ihc", "moon", "motorcycle_left", "page", "text",
)  # fmt: skip
SCENES_CLASSES = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "ihc", "motorcycle_left",
)  # fmt: skip
# Near-duplicates of a class photograph (a stereo twin) never enter the OOD pool.
NEAR_DUPLICATES = {"motorcycle_left": ("motorcycle_right",)}


def cache_dir() -> Path:
    return Path(os.environ.get("LTRAY_CACHE") or Path.home() / ".cache" / "ltray")


def photo_path(name: str) -> Path:
    if name not in PHOTOS:
        raise DataError(f"unknown embedded photograph {name!r}")
    package, relative = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"photograph {name!r} needs the package {package!r}, which is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def read_photo(name: str) -> np.ndarray:
    """Photograph `name` as uint8 RGB [H, W, 3] (grayscale replicated to three channels)."""
    path = photo_path(name)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read bundled photograph {name!r} at {path}: {error}") from error


@dataclass(frozen=True)
class PatchProvenance:
    """Where each patch was cut: `photos[photo_index[i]]` at `boxes[i]` = (top, left, side) in its pixels."""

    photos: tuple[str, ...]
    photo_index: np.ndarray
    boxes: np.ndarray

    def photo_names(self) -> np.ndarray:
        return np.asarray(self.photos, dtype=object)[self.photo_index]


@dataclass(frozen=True)
class EmbeddedData:
    """An embedded data set: the whole train pool (splits index into it), the test set and the split profile."""

    name: str
    train: ArraySource
    test: ArraySource
    class_names: tuple[str, ...]
    n_max: int
    imbalance: float
    val_per_class: int
    sha256: str
    train_provenance: PatchProvenance | None = None
    test_provenance: PatchProvenance | None = None


@dataclass(frozen=True)
class _Block:
    top: int
    left: int
    height: int
    width: int


def _seed_for(seed: int, name: str) -> int:
    """A per-photograph seed, so a photograph's patches do not depend on which other photographs are used."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def _blocks(height: int, width: int) -> list[_Block]:
    rows = max(2, round(height / BLOCK_TARGET_SIDE))
    cols = max(2, round(width / BLOCK_TARGET_SIDE))
    row_edges = np.linspace(0, height, rows + 1).astype(int)
    col_edges = np.linspace(0, width, cols + 1).astype(int)
    return [
        _Block(int(top), int(left), int(bottom - top), int(right - left))
        for top, bottom in zip(row_edges[:-1], row_edges[1:])
        for left, right in zip(col_edges[:-1], col_edges[1:])
    ]


def split_blocks(name: str, shape: tuple[int, int], seed: int) -> tuple[list[_Block], list[_Block]]:
    """(train blocks, test blocks) of a photograph: a seeded `TEST_BLOCK_FRACTION` of its grid is the test area."""
    blocks = _blocks(*shape)
    count = max(1, round(TEST_BLOCK_FRACTION * len(blocks)))
    test = set(np.random.RandomState(_seed_for(seed, name + "/test-blocks")).permutation(len(blocks))[:count].tolist())
    return [b for i, b in enumerate(blocks) if i not in test], [b for i, b in enumerate(blocks) if i in test]


def integral_image(photo: np.ndarray) -> np.ndarray:
    """Summed-area table [H+1, W+1, 3] (int64) of a uint8 photograph, with a zero first row and column."""
    table = np.zeros((photo.shape[0] + 1, photo.shape[1] + 1, 3), dtype=np.int64)
    table[1:, 1:] = photo.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    return table


def reduce_patch(table: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """Box-average the square patch (top, left, side), side a multiple of 16, down to 16x16 (exact integer rounding)."""
    factor = side // PATCH_SIDE
    rows = top + factor * np.arange(PATCH_SIDE + 1)
    cols = left + factor * np.arange(PATCH_SIDE + 1)
    corner = table[rows[:, None], cols[None, :]]
    sums = corner[1:, 1:] - corner[:-1, 1:] - corner[1:, :-1] + corner[:-1, :-1]
    area = factor * factor
    return ((sums + area // 2) // area).astype(np.uint8)


def is_textured(patch: np.ndarray) -> bool:
    """Whether the grey-level std of a 16x16 patch reaches `MIN_PATCH_STD` (exact integer test)."""
    grey3 = patch.sum(axis=2, dtype=np.int64)  # 3 × grey level
    n = grey3.size
    scaled_variance = n * int((grey3 * grey3).sum()) - int(grey3.sum()) ** 2  # = (3n)² · var(grey)
    return scaled_variance >= (3 * n * MIN_PATCH_STD) ** 2


def cut_patches(
    table: np.ndarray, blocks: Sequence[_Block], count: int, sides: Sequence[int], seed: int, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct textured patches of the photograph whose summed-area table is `table`.

    Each patch lies inside one block shrunk by `BLOCK_MARGIN`; its side is drawn from `sides`. Returns the
    16x16 images and their boxes (top, left, side).
    """
    rng = np.random.RandomState(seed)
    images = np.empty((count, PATCH_SIDE, PATCH_SIDE, 3), dtype=np.uint8)
    boxes = np.empty((count, 3), dtype=np.int64)
    seen: set[tuple[int, int, int]] = set()
    found = 0
    for _ in range(count * MAX_ATTEMPTS_PER_PATCH):
        if found == count:
            break
        block = blocks[rng.randint(len(blocks))]
        side = int(sides[rng.randint(len(sides))])
        free_rows = block.height - 2 * BLOCK_MARGIN - side + 1
        free_cols = block.width - 2 * BLOCK_MARGIN - side + 1
        if free_rows <= 0 or free_cols <= 0:
            continue
        top = block.top + BLOCK_MARGIN + rng.randint(free_rows)
        left = block.left + BLOCK_MARGIN + rng.randint(free_cols)
        if (top, left, side) in seen:
            continue
        patch = reduce_patch(table, top, left, side)
        if not is_textured(patch):
            continue
        seen.add((top, left, side))
        images[found] = patch
        boxes[found] = (top, left, side)
        found += 1
    if found < count:
        raise DataError(f"{label}: found only {found} of {count} textured patches; the photograph is too flat")
    return images, boxes


def build_scenes(photos: Sequence[str], seed: int, train_per_class: int, test_per_class: int) -> dict[str, np.ndarray]:
    """Arrays of a scenes data set with one class per photograph (class-major order, class ids in `photos` order).

    A photograph's patches depend only on its name and `seed`, not on the other photographs.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for label, name in enumerate(photos):
        photo = read_photo(name)
        table = integral_image(photo)
        train_blocks, test_blocks = split_blocks(name, photo.shape[:2], seed)
        for split, blocks, count in (("train", train_blocks, train_per_class), ("test", test_blocks, test_per_class)):
            patch_seed = _seed_for(seed, f"{name}/{split}")
            images, boxes = cut_patches(table, blocks, count, CLASS_PATCH_SIDES, patch_seed, f"{name} ({split} area)")
            for key, value in (
                ("images", images),
                ("labels", np.full(count, label, dtype=np.int64)),
                ("photo", np.full(count, label, dtype=np.int64)),
                ("boxes", boxes),
            ):
                parts.setdefault(f"{split}_{key}", []).append(value)
    return {key: np.concatenate(value) for key, value in parts.items()}


def pool_photos() -> tuple[str, ...]:
    """The photographs of the OOD pool: every registered one that is neither a scenes-lt class nor a near-duplicate."""
    excluded = set(SCENES_CLASSES)
    for name in SCENES_CLASSES:
        excluded.update(NEAR_DUPLICATES.get(name, ()))
    return tuple(name for name in PHOTOS if name not in excluded)


def build_pool(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` textured patches spread evenly over `pool_photos()`, then shuffled (seeded); labels −1."""
    photos = pool_photos()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for position, name in enumerate(photos):
        count = n // len(photos) + (position < n % len(photos))
        if count == 0:
            continue
        photo = read_photo(name)
        whole = [_Block(0, 0, photo.shape[0], photo.shape[1])]
        patch_images, patch_boxes = cut_patches(
            integral_image(photo), whole, count, POOL_PATCH_SIDES, _seed_for(seed, f"{name}/pool"), f"{name} (pool)"
        )
        parts.append((patch_images, patch_boxes, np.full(count, position, dtype=np.int64)))
    order = np.random.RandomState(_seed_for(seed, "pool/order")).permutation(n)
    images, boxes, photo_index = (np.concatenate(column)[order] for column in zip(*parts))
    return {"images": images, "labels": np.full(n, -1, dtype=np.int64), "photo": photo_index, "boxes": boxes}


def build_digits(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """scikit-learn's digits as 16x16 RGB uint8 (0..16 scaled to 0..255, each pixel repeated 2x2) with a stratified
    seeded train/test split; both sets class-major, ascending original index within a class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    levels = np.rint(digits.images).astype(np.int64)
    grey = ((levels * 255 + 8) // 16).astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    images = np.repeat(grey[..., None], 3, axis=3)
    target = digits.target.astype(np.int64)
    train_index, test_index = [], []
    for label in range(int(target.max()) + 1):
        members = np.flatnonzero(target == label)
        shuffled = np.random.RandomState(_seed_for(seed, f"digits/{label}")).permutation(members)
        test_count = int(round(test_fraction * members.size))
        test_index.append(np.sort(shuffled[:test_count]))
        train_index.append(np.sort(shuffled[test_count:]))
    train, test = np.concatenate(train_index), np.concatenate(test_index)
    return {
        "train_images": images[train],
        "train_labels": target[train],
        "train_source_index": train,
        "test_images": images[test],
        "test_labels": target[test],
        "test_source_index": test,
    }


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array (name, dtype, shape, bytes), in sorted name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


_GEOMETRY = {
    "patch_side": PATCH_SIDE,
    "class_patch_sides": CLASS_PATCH_SIDES,
    "pool_patch_sides": POOL_PATCH_SIDES,
    "block_target_side": BLOCK_TARGET_SIDE,
    "test_block_fraction": TEST_BLOCK_FRACTION,
    "block_margin": BLOCK_MARGIN,
    "min_patch_std": MIN_PATCH_STD,
    "max_attempts_per_patch": MAX_ATTEMPTS_PER_PATCH,
}


@dataclass(frozen=True)
class ScenesRecipe:
    """A scenes data set: one class per photograph, `train_per_class` + `test_per_class` patches each."""

    photos: tuple[str, ...]
    seed: int
    train_per_class: int
    test_per_class: int

    def build(self) -> dict[str, np.ndarray]:
        return build_scenes(self.photos, self.seed, self.train_per_class, self.test_per_class)


@dataclass(frozen=True)
class DigitsRecipe:
    """scikit-learn's digits with a stratified `test_fraction` test set."""

    seed: int
    test_fraction: float

    def build(self) -> dict[str, np.ndarray]:
        return build_digits(self.seed, self.test_fraction)


@dataclass(frozen=True)
class PoolRecipe:
    """The embedded OOD pool of `n` patches."""

    n: int
    seed: int

    def build(self) -> dict[str, np.ndarray]:
        return build_pool(self.n, self.seed)


Recipe = ScenesRecipe | DigitsRecipe | PoolRecipe


def cache_path(recipe: Recipe) -> Path:
    """The cache file of a recipe: keyed by a hash of its parameters, the patch geometry and the build version."""
    description = {"recipe": type(recipe).__name__, "build_version": BUILD_VERSION, **asdict(recipe), **_GEOMETRY}
    if isinstance(recipe, PoolRecipe):
        description["photos"] = pool_photos()
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "embedded" / f"{type(recipe).__name__.removesuffix('Recipe').lower()}-{key}.npz"


def cached_arrays(recipe: Recipe) -> dict[str, np.ndarray]:
    """The recipe's arrays from its cache file, else built and cached; a damaged cache file is rebuilt."""
    path = cache_path(recipe)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files if name != "sha256"}
                recorded = str(stored["sha256"])
            if recorded == arrays_sha256(arrays):
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # an unreadable cache file is rebuilt below
    arrays = recipe.build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as stream:
            np.savez(stream, sha256=np.asarray(arrays_sha256(arrays)), **arrays)  # type: ignore[arg-type]
    except OSError as error:
        warnings.warn(f"cannot cache embedded data under {path.parent}: {error}", stacklevel=2)
    return arrays


@dataclass(frozen=True)
class _DatasetSpec:
    recipe: ScenesRecipe | DigitsRecipe
    class_names: tuple[str, ...]
    n_max: int
    imbalance: float
    val_per_class: int


SCENES_RECIPE = ScenesRecipe(SCENES_CLASSES, seed=0, train_per_class=600, test_per_class=100)
DIGITS_RECIPE = DigitsRecipe(seed=0, test_fraction=0.25)
SPECS: dict[str, _DatasetSpec] = {
    "scenes-lt": _DatasetSpec(
        recipe=SCENES_RECIPE,
        class_names=SCENES_CLASSES,
        n_max=500,
        imbalance=100.0,
        val_per_class=50,
    ),
    "digits-lt": _DatasetSpec(
        recipe=DIGITS_RECIPE,
        class_names=tuple(str(digit) for digit in range(10)),
        n_max=100,
        imbalance=10.0,
        val_per_class=10,
    ),
}
EMBEDDED_DATASETS = tuple(SPECS)
# `arrays_sha256` of the builds that the shipped splits (ltray/splits/<name>/) index into.
REFERENCE_SHA256 = {
    "scenes-lt": "c88cb45baf06877bd474dcec45dbf0b934d8984e2aff0a6aa932e1354619e4d6",
    "digits-lt": "18ba43d26a487c7fb0d080c163e34789f49a9661c225f287ebedc88d4182d82f",
}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("scikit-image", "scikit-learn", "numpy", "pillow"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def load_embedded(name: str) -> EmbeddedData:
    """Embedded data set `name` (one of `EMBEDDED_DATASETS`), checked against the reference build.

    Raises DataError when the installed packages produce other arrays than the build the shipped splits index
    into (e.g. a scikit-image release with different bundled photographs).
    """
    if name not in SPECS:
        raise DataError(f"unknown embedded data set {name!r}; expected one of {', '.join(EMBEDDED_DATASETS)}")
    spec = SPECS[name]
    arrays = cached_arrays(spec.recipe)
    sha256 = arrays_sha256(arrays)
    if sha256 != REFERENCE_SHA256[name]:
        raise DataError(
            f"{name}: the arrays built from the installed packages ({_versions()}) have sha256 {sha256[:16]}…, "
            f"not the reference {REFERENCE_SHA256[name][:16]}…; the shipped splits would index other images"
        )
    provenance: dict[str, PatchProvenance | None] = {"train": None, "test": None}
    if isinstance(spec.recipe, ScenesRecipe):
        for split in provenance:
            provenance[split] = PatchProvenance(spec.recipe.photos, arrays[f"{split}_photo"], arrays[f"{split}_boxes"])
    return EmbeddedData(
        name=name,
        train=ArraySource(arrays["train_images"], arrays["train_labels"], f"{name}-train"),
        test=ArraySource(arrays["test_images"], arrays["test_labels"], f"{name}-test"),
        class_names=spec.class_names,
        n_max=spec.n_max,
        imbalance=spec.imbalance,
        val_per_class=spec.val_per_class,
        sha256=sha256,
        train_provenance=provenance["train"],
        test_provenance=provenance["test"],
    )


def load_pool(n: int = 10_000, seed: int = 0) -> tuple[ArraySource, PatchProvenance]:
    """The embedded OOD pool and where each of its patches was cut."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"the embedded pool size must be a positive integer, got {n!r}")
    arrays = cached_arrays(PoolRecipe(int(n), int(seed)))
    source = ArraySource(arrays["images"], arrays["labels"], "embedded-pool")
    return source, PatchProvenance(pool_photos(), arrays["photo"], arrays["boxes"])


def embedded_pool(n: int = 10_000, seed: int = 0) -> ArraySource:
    """`n` random 16x16 natural-image patches of bundled photographs that are not scenes-lt classes; labels −1."""
    return load_pool(n, seed)[0]


def check_split_base(manifest: dict[str, object], data: EmbeddedData) -> None:
    """Check that a split manifest was generated on `data`'s train pool (its recorded `base_set` sha256)."""
    base = manifest.get("base_set")
    if not isinstance(base, dict) or "sha256" not in base:
        raise DataError(f"{data.name}: the split manifest records no base_set sha256")
    if base["sha256"] != data.sha256:
        raise DataError(
            f"{data.name}: the split was generated on arrays with sha256 {str(base['sha256'])[:16]}…, "
            f"these have {data.sha256[:16]}…"
        )


def load_embedded_split(name: str, split_id: int, directory: str | Path) -> tuple[EmbeddedData, Split]:
    """Embedded data set `name` and its split `split_id` read from `directory` (e.g. ltray/splits/<name>/), with every
    file's sha256, the load checks, the labels and the recorded base-set sha256 verified."""
    data = load_embedded(name)
    split = read_split(directory, name, split_id, labels=data.train.labels)
    check_split_base(split.manifest, data)
    return data, split


# ---- the photograph choice and its baselines (`python -m ltray.data.embedded --report docs/embedded_data.md`) ----

MIN_TEXTURED_FRACTION = 0.5  # a photograph with fewer textured random patches would repeat its few textured spots
COLOUR_TRIVIAL_ACCURACY = 0.95  # a class this well separated by mean colour alone is excluded
NEAR_CHANCE_FACTOR = 2.0  # a class whose best baseline stays below this multiple of chance is flagged
REPORT_MARKER = "<!-- end of generated part: text below this line is kept when the report is regenerated -->"
# baseline: (description, inverse regularisation strength C of the logistic regression)
BASELINES: dict[str, tuple[str, float]] = {
    "mean colour": ("logistic regression (C = 1) on the patch's mean R, G, B", 1.0),
    "colour histogram": ("logistic regression (C = 1) on the patch's 4x4x4 joint RGB histogram", 1.0),
    "raw pixels": ("logistic regression (C = 0.01) on the 768 standardised pixel values", 0.01),
}


def baseline_features(images: np.ndarray, baseline: str) -> np.ndarray:
    """The feature matrix of one baseline of `BASELINES` for uint8 images [N, H, W, 3]."""
    values = images.astype(np.float64)
    if baseline == "mean colour":
        return values.mean(axis=(1, 2))
    if baseline == "colour histogram":
        bins = (images // 64).astype(np.int64)
        joint = (bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).reshape(len(images), -1)
        return np.stack([np.bincount(row, minlength=64) for row in joint]) / joint.shape[1]
    if baseline == "raw pixels":
        return values.reshape(len(images), -1) / 255.0
    raise DataError(f"unknown baseline {baseline!r}")


def per_class_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], baseline: str
) -> np.ndarray:
    """Per-class test accuracy of a standardised logistic regression on `baseline_features`; classes 0..C−1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(train[1])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=BASELINES[baseline][1], max_iter=1000))
    model.fit(baseline_features(train[0], baseline), train[1])
    predicted = model.predict(baseline_features(test[0], baseline))
    return np.asarray([np.mean(predicted[test[1] == label] == label) for label in classes])


def textured_fraction(name: str, samples: int = 2000, seed: int = 0) -> float:
    """Fraction of random class-size patches of photograph `name` that pass the near-constant test."""
    photo = read_photo(name)
    table = integral_image(photo)
    rng = np.random.RandomState(seed)
    passed = 0
    for _ in range(samples):
        side = int(CLASS_PATCH_SIDES[rng.randint(len(CLASS_PATCH_SIDES))])
        top, left = rng.randint(photo.shape[0] - side + 1), rng.randint(photo.shape[1] - side + 1)
        passed += is_textured(reduce_patch(table, top, left, side))
    return passed / samples


@dataclass
class Selection:
    """The outcome of `select_scenes_classes`: the chosen photographs and why each candidate was kept or not."""

    chosen: tuple[str, ...]
    verdicts: dict[str, str]
    textured: dict[str, float]
    rounds: list[tuple[tuple[str, ...], dict[str, np.ndarray]]]


def _subset(arrays: dict[str, np.ndarray], keep: Sequence[int], split: str) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(arrays[f"{split}_labels"], keep)
    relabel = {old: new for new, old in enumerate(keep)}
    labels = np.asarray([relabel[int(label)] for label in arrays[f"{split}_labels"][mask]], dtype=np.int64)
    return arrays[f"{split}_images"][mask], labels


def select_scenes_classes(num_classes: int = 10) -> Selection:
    """Choose the scenes-lt photographs among `SCENES_CANDIDATES` by the documented rule.

    1. A candidate is rejected as flat when fewer than `MIN_TEXTURED_FRACTION` of its random patches are textured,
       or when its train or test area cannot yield enough textured patches.
    2. On the remaining candidates, one whose class reaches `COLOUR_TRIVIAL_ACCURACY` with the mean-colour
       baseline is rejected as separable by colour alone.
    3. While more than `num_classes` remain, the one with the highest colour accuracy (the larger of the mean-colour
       and colour-histogram baselines), refitted on the remaining set, is dropped.
    Patches of a photograph do not depend on the other photographs, so one build serves every round.
    """
    recipe = SCENES_RECIPE
    verdicts: dict[str, str] = {}
    textured = {name: textured_fraction(name) for name in SCENES_CANDIDATES}
    usable = []
    for name in SCENES_CANDIDATES:
        fraction = textured[name]
        if fraction < MIN_TEXTURED_FRACTION:
            verdicts[name] = f"rejected, mostly flat (textured fraction {fraction:.2f})"
            continue
        try:
            build_scenes([name], recipe.seed, recipe.train_per_class, recipe.test_per_class)
            usable.append(name)
        except DataError as error:
            verdicts[name] = f"rejected, too flat in one area ({str(error).split(': ', 1)[1].split(';')[0]})"
    arrays = build_scenes(usable, recipe.seed, recipe.train_per_class, recipe.test_per_class)
    colour = ("mean colour", "colour histogram")
    rounds: list[tuple[tuple[str, ...], dict[str, np.ndarray]]] = []

    def fit(names: Sequence[str]) -> dict[str, np.ndarray]:
        keep = [usable.index(name) for name in names]
        train, test = _subset(arrays, keep, "train"), _subset(arrays, keep, "test")
        accuracies = {baseline: per_class_accuracy(train, test, baseline) for baseline in colour}
        rounds.append((tuple(names), accuracies))
        return accuracies

    accuracies = fit(usable)
    remaining = []
    for position, name in enumerate(usable):
        mean_accuracy = float(accuracies["mean colour"][position])
        if mean_accuracy >= COLOUR_TRIVIAL_ACCURACY:
            verdicts[name] = f"rejected, separable by mean colour alone ({mean_accuracy:.2f})"
        else:
            remaining.append(name)
    while len(remaining) > num_classes:
        accuracies = fit(remaining)
        separability = np.maximum(accuracies["mean colour"], accuracies["colour histogram"])
        dropped = remaining.pop(int(np.argmax(separability)))
        verdicts[dropped] = (
            f"dropped, the most colour-separable of {len(remaining) + 1} ({float(separability.max()):.2f})"
        )
    for name in remaining:
        verdicts[name] = "chosen"
    return Selection(tuple(remaining), verdicts, textured, rounds)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _accuracy_table(data: EmbeddedData) -> tuple[list[str], dict[str, np.ndarray]]:
    train, test = (data.train.images, data.train.labels), (data.test.images, data.test.labels)
    accuracies = {baseline: per_class_accuracy(train, test, baseline) for baseline in BASELINES}
    rows = [[name, *(f"{accuracies[b][label]:.2f}" for b in BASELINES)] for label, name in enumerate(data.class_names)]
    rows.append(["**mean**", *(f"**{accuracies[b].mean():.2f}**" for b in BASELINES)])
    return _table(["class", *BASELINES], rows), accuracies


def report_markdown() -> str:
    """The text of docs/embedded_data.md: the candidates, the choice rule and outcome, the baselines, the pool."""
    selection = select_scenes_classes(len(SCENES_CLASSES))
    if selection.chosen != SCENES_CLASSES:
        raise DataError(f"the selection rule now chooses {selection.chosen}, SCENES_CLASSES is {SCENES_CLASSES}")
    scenes, digits = load_embedded("scenes-lt"), load_embedded("digits-lt")
    pool, pool_provenance = load_pool()
    recipe = SCENES_RECIPE
    lines = [
        "# Embedded data sets",
        "",
        "Generated by `python -m ltray.data.embedded --report docs/embedded_data.md` (`ltray/data/embedded.py`);",
        "do not edit the generated part by hand.",
        "",
        "Everything here is built from images bundled inside installed packages (scikit-image's `data/` folder,",
        "scikit-learn's sample images and digits); nothing is downloaded. Built with " + _versions() + ".",
        "",
        "## scenes-lt",
        "",
        f"One class per scikit-image photograph. Every photograph is cut into a grid of blocks of about "
        f"{BLOCK_TARGET_SIDE} px; a seeded {TEST_BLOCK_FRACTION:.0%} of the blocks is the test area, the rest the "
        f"train area. A patch lies inside one block shrunk by {BLOCK_MARGIN} px, so train and test patches never "
        f"overlap. Patch sides are drawn from {list(CLASS_PATCH_SIDES)} px and box-averaged to "
        f"{PATCH_SIDE}x{PATCH_SIDE}; a patch whose grey-level std is below {MIN_PATCH_STD} (of 255) is rejected "
        f"as near-constant, and so is a repeated box. Train pool: {recipe.train_per_class} patches per class "
        f"(class-major order); test: {recipe.test_per_class} per class.",
        "",
        "The build is integer arithmetic on losslessly decoded PNG photographs with NumPy's frozen legacy random",
        "stream (`RandomState`), so it is bit-identical across machines. `load_embedded` compares the sha256 of the",
        "arrays with `REFERENCE_SHA256`, the build the shipped splits (`ltray/splits/scenes-lt/`) index into, and raises",
        "DataError on a mismatch (for example a scikit-image release with other bundled photographs). Built arrays",
        "are cached under `$LTRAY_CACHE` or `~/.cache/ltray`, keyed by a hash of the build parameters.",
        "",
        "### Candidates and choice",
        "",
        f"Rule (`select_scenes_classes`): reject a photograph when fewer than {MIN_TEXTURED_FRACTION:.0%} of its",
        "random patches pass the near-constant test, or when its train or test area cannot yield enough textured",
        "patches;",
        f"reject one whose class the mean-colour baseline separates with accuracy ≥ "
        f"{COLOUR_TRIVIAL_ACCURACY}; then, while more than {len(SCENES_CLASSES)} remain, drop the most "
        "colour-separable one (the larger of its mean-colour and colour-histogram accuracies, refitted on the "
        "remaining set). Baselines are fitted on the balanced train pool and scored on the balanced test set.",
        "",
    ]
    rows = []
    for name in SCENES_CANDIDATES:
        photo = read_photo(name)
        is_grey = np.array_equal(photo[..., 0], photo[..., 1]) and np.array_equal(photo[..., 1], photo[..., 2])
        rows.append([f"`{name}`", f"{photo.shape[1]}x{photo.shape[0]}", "grey" if is_grey else "colour",
                     f"{selection.textured[name]:.2f}", selection.verdicts[name]])  # fmt: skip
    lines += _table(["photograph", "size (w x h)", "colour", "textured fraction", "verdict"], rows)
    lines += ["", "Colour baselines of each selection round (per-class test accuracy):", ""]
    for names, accuracies in selection.rounds:
        lines += [f"Round with {len(names)} photographs:", ""]
        lines += _table(
            ["photograph", *accuracies],
            [[name, *(f"{accuracies[b][i]:.2f}" for b in accuracies)] for i, name in enumerate(names)],
        )
        lines.append("")
    table, accuracies = _accuracy_table(scenes)
    best = np.max(np.stack(list(accuracies.values())), axis=0)
    near_chance = [scenes.class_names[i] for i in np.flatnonzero(best < NEAR_CHANCE_FACTOR / len(scenes.class_names))]
    lines += [
        "### Baselines of the final classes",
        "",
        "Per-class test accuracy (chance 0.10): "
        + "; ".join(f"{name}: {text}" for name, (text, _) in BASELINES.items())
        + ".",
        "",
        *table,
        "",
        f"Classes whose best baseline stays below {NEAR_CHANCE_FACTOR:g}x chance: "
        + (", ".join(near_chance) if near_chance else "none") + ".",
        "",
        f"Long-tailed splits: n_max {scenes.n_max}, ρ = {scenes.imbalance:g}, {scenes.val_per_class} validation "
        f"patches per class held out of the train pool; sha256 of the arrays: `{scenes.sha256}`.",
        "",
        "## digits-lt",
        "",
        "scikit-learn's 1 797 handwritten digits (8x8, levels 0..16) scaled to 0..255, each pixel repeated 2x2 to "
        "16x16 and copied to three channels. A seeded stratified 25% of every class is the test set "
        f"({len(digits.test)} images), the rest the train pool ({len(digits.train)}).",
        "",
    ]
    table, _ = _accuracy_table(digits)
    counts = ", ".join(str(int(c)) for c in np.bincount(digits.train.labels))
    lines += [
        *table,
        "",
        f"Train pool per class: {counts}. Long-tailed splits: n_max {digits.n_max}, ρ = {digits.imbalance:g} "
        f"(n_max fits the smallest class pool, {int(np.bincount(digits.train.labels).min()) - digits.val_per_class} "
        f"after holding out {digits.val_per_class} validation images per class; the few-shot set S_b has "
        f"⌊0.01·n_max⌋ = {digits.n_max // 100} image per class); sha256 of the arrays: `{digits.sha256}`.",
        "",
        "## Embedded OOD pool",
        "",
        f"`embedded_pool(n, seed)`: n patches (default {len(pool)}) of sides {list(POOL_PATCH_SIDES)} px box-averaged "
        f"to {PATCH_SIDE}x{PATCH_SIDE}, spread evenly over the bundled photographs that are not scenes-lt classes "
        "(nor a near-duplicate of one, such as the stereo twin `motorcycle_right`), near-constant patches rejected, "
        "then shuffled; labels −1. The pool also uses JPEG photographs, whose decoding can differ between image",
        "libraries; no shipped file indexes into it, so it is not checked against a reference sha256.",
        "",
    ]
    patch_counts = np.bincount(pool_provenance.photo_index, minlength=len(pool_provenance.photos))
    lines += _table(
        ["photograph", "package", "patches"],
        [[f"`{name}`", PHOTOS[name][0], str(int(patch_counts[i]))] for i, name in enumerate(pool_provenance.photos)],
    )
    return "\n".join(lines) + "\n"


def write_report_text(path: str | Path, generated: str) -> None:
    """Write `generated` then `REPORT_MARKER` to `path` atomically, keeping the old file's text after the marker."""
    path = Path(path)
    kept = "\n"
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if REPORT_MARKER in old:
            kept = old.split(REPORT_MARKER, 1)[1]
    with atomic_file(path, encoding="utf-8") as stream:
        stream.write(generated + "\n" + REPORT_MARKER + kept)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ltray.data.embedded", description="Build the embedded data sets and report on them."
    )
    parser.add_argument("--sha", action="store_true", help="print the sha256 of every embedded build")
    parser.add_argument("--report", type=Path, metavar="PATH", help="write the data report (docs/embedded_data.md)")
    arguments = parser.parse_args(argv)
    try:
        if arguments.sha:
            for name, spec in SPECS.items():
                print(f"{name} {arrays_sha256(cached_arrays(spec.recipe))}")
        if arguments.report:
            write_report_text(arguments.report, report_markdown())
            print(arguments.report)
    except DataError as error:
        print(f"ltray: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
