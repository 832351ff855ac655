"""`nerve-jax tune`: post-processing parameters chosen on held-out (out-of-fold) predictions.

The held-out predictions of each fold's workdir (heldout_predictions.npz, written by train and
evaluate) are pooled, brought back to 420x580 with the resize of predict, and scored with the
Kaggle Dice against the true masks of the workdir's TFDS data, for every point of a grid of
`postprocess.Settings`. The whole grid is scored exactly: per frame and pixel threshold the
components are labelled once, each distinct choice of components is refined once (holes,
ellipses), the minimum mask areas are comparisons on the refined areas, and the presence
threshold decides per frame between that Dice and the empty mask's.

Tuning on the frames that report the score flatters it, so tune reports next to each other,
on the same frames: the config's settings, the chosen ones (in-sample), and with two folds or
more a leave-one-fold-out estimate (settings chosen on the other folds, scored on each fold).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tqdm import tqdm

from nerve_jax import config_util, evaluation, fileio, postprocess, runtime, step
from nerve_jax.data import pipeline, tfds_builder
from nerve_jax.errors import UserError

BOOLS = (False, True)
METRIC = evaluation.METRIC


@dataclasses.dataclass(frozen=True)
class Grid:
    """The values searched for each field of postprocess.Settings (booleans: both); each kept
    sorted and unique."""

    thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.1, 0.901, 0.05), 2).tolist())
    min_component_areas: tuple[int, ...] = (0, 250, 500, 1000, 2000)
    min_mask_areas: tuple[int, ...] = (0, 1000, 2000, 3000, 4000, 5000)
    presence_thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.951, 0.05),
                                                            2).tolist())

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, tuple(sorted(set(getattr(self, field.name)))))

    def including(self, settings: postprocess.Settings) -> "Grid":
        """This grid with `settings`' values added, so that they are scored too."""
        return Grid((*self.thresholds, settings.threshold),
                    (*self.min_component_areas, settings.min_component_area),
                    (*self.min_mask_areas, settings.min_mask_area),
                    (*self.presence_thresholds, settings.presence_threshold))

    def axes(self) -> tuple[tuple, ...]:
        """The values along each axis of a score table, in postprocess.Settings field order."""
        return (self.thresholds, self.min_component_areas, BOOLS, BOOLS, BOOLS,
                self.min_mask_areas, self.presence_thresholds)

    def index(self, settings: postprocess.Settings) -> tuple[int, ...]:
        values = dataclasses.astuple(settings)
        try:
            return tuple(axis.index(v) for axis, v in zip(self.axes(), values, strict=True))
        except ValueError:
            raise ValueError(f"{settings} is not on the grid") from None

    def settings(self, index: Sequence[int]) -> postprocess.Settings:
        return postprocess.Settings(*(axis[i] for axis, i in zip(self.axes(), index, strict=True)))

    def at_edge(self, settings: postprocess.Settings) -> list[str]:
        """The numeric fields of `settings` at the end of their searched range, where a wider
        grid might score better (a minimum area of 0 is no such end)."""
        names = [f.name for f in dataclasses.fields(settings)]
        return [name for name, axis, value in zip(names, self.axes(), dataclasses.astuple(settings),
                                                  strict=True)
                if axis is not BOOLS and len(axis) > 1
                and (value == axis[-1] or (value == axis[0] and "area" not in name))]


def _dice_from_counts(pred_area: np.ndarray, intersection: np.ndarray,
                      truth_area: int) -> np.ndarray:
    total = pred_area + truth_area
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1))


def _shape_counts(components: postprocess.Components, ellipse_pixels: list,
                  kept: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(areas, intersections with `truth`), each [2, 2] over (fill_holes, ellipse_fit), of the
    kept components refined as postprocess.refine_shape does. `ellipse_pixels[k - 1]` are the
    pixels of component k's ellipse (postprocess.ellipses_of, ellipse_pixels)."""
    base = postprocess.components_mask(components, kept)
    base_ellipses = np.zeros(base.shape, bool)
    for k in kept:  # The ellipses of a union of components are those of each.
        base_ellipses[ellipse_pixels[k - 1]] = True
    filled = postprocess.fill_holes(base)
    if np.count_nonzero(filled) == np.count_nonzero(base):  # Nothing to fill (filled ⊇ base).
        masks = [[base, base_ellipses], [base, base_ellipses]]
    else:
        masks = [[base, base_ellipses], [filled, postprocess.fit_ellipses(filled)]]
    areas = np.array([[np.count_nonzero(m) for m in row] for row in masks])
    intersections = np.array([[np.count_nonzero(m & truth) for m in row] for row in masks])
    return areas, intersections


def kept_dice(probs: np.ndarray, truth: np.ndarray, grid: Grid) -> np.ndarray:
    """The Kaggle Dice of one frame under every shape setting of `grid`, as if its presence
    passed: probs [H, W] float32, truth [H, W] bool -> [T, A, 2, 2, 2, M] float64 over
    (threshold, min_component_area, largest_component_only, fill_holes, ellipse_fit,
    min_mask_area)."""
    truth_area = int(np.count_nonzero(truth))
    empty_score = float(truth_area == 0)
    min_mask_areas = np.asarray(grid.min_mask_areas)
    out = np.empty((len(grid.thresholds), len(grid.min_component_areas), 2, 2, 2,
                    len(min_mask_areas)))
    for t, threshold in enumerate(grid.thresholds):
        components = postprocess.label_components(probs > threshold)
        if components.window is None:  # Empty here, and at every higher threshold.
            out[t:] = empty_score
            break
        ellipse_pixels = [postprocess.ellipse_pixels(e, probs.shape)
                          for e in postprocess.ellipses_of(components)]
        refined = {}
        for a, min_component_area in enumerate(grid.min_component_areas):
            for largest in BOOLS:
                kept = postprocess.selected_components(components.areas, min_component_area,
                                                       largest)
                key = kept.tobytes()
                if key not in refined:
                    refined[key] = _shape_counts(components, ellipse_pixels, kept, truth)
                areas, intersections = refined[key]
                dice = _dice_from_counts(areas, intersections, truth_area)
                out[t, a, int(largest)] = np.where(areas[..., None] >= min_mask_areas,
                                                   dice[..., None], empty_score)
    return out


class ScoreTable(NamedTuple):
    """Sums over frames of the Kaggle Dice of every settings of a Grid."""

    dice_sum: np.ndarray  # [T, A, 2, 2, 2, M, P] float64, axes as Grid.axes().
    empty_sum: float  # The all-empty baseline.
    frames: int

    def __add__(self, other: "ScoreTable") -> "ScoreTable":
        return ScoreTable(self.dice_sum + other.dice_sum, self.empty_sum + other.empty_sum,
                          self.frames + other.frames)

    def mean(self, index: tuple[int, ...]) -> float:
        return float(self.dice_sum[index]) / self.frames


def score_frames(probs: np.ndarray, presence: np.ndarray, truths: np.ndarray,
                 grid: Grid) -> ScoreTable:
    """ScoreTable of frames: probs [n, H, W] float32, presence [n], truths [n, H, W] bool."""
    kept = np.stack([kept_dice(p, t, grid) for p, t in zip(probs, truths, strict=True)])
    empty = (~truths.any(axis=(1, 2))).astype(np.float64)
    passed = (np.asarray(presence)[:, None]
              >= np.asarray(grid.presence_thresholds)[None, :]).astype(np.float64)
    # Per presence threshold: the frames that pass score kept Dice, the others empty's.
    sums = (kept - empty.reshape(-1, *[1] * (kept.ndim - 1))).reshape(len(kept), -1).T @ passed
    return ScoreTable(sums.reshape(*kept.shape[1:], -1) + empty.sum(), float(empty.sum()),
                      len(kept))


def best_index(table: ScoreTable, grid: Grid, defaults: postprocess.Settings) -> tuple[int, ...]:
    """The grid point with the highest Dice; among ties, the one that changes the fewest of
    `defaults`' fields."""
    dice = table.dice_sum
    changed = sum(np.not_equal(np.asarray(axis, dtype=float),
                               float(default)).reshape([-1 if i == k else 1
                                                        for k in range(dice.ndim)])
                  for i, (axis, default) in enumerate(zip(grid.axes(),
                                                          dataclasses.astuple(defaults),
                                                          strict=True)))
    tied = dice >= dice.max() - 1e-9
    return np.unravel_index(np.argmin(np.where(tied, changed, np.inf)), dice.shape)


@jax.jit
def _full_resolution(logits: jax.Array) -> jax.Array:
    """[n, h, w] logits -> [n, 420, 580] float32 probabilities, exactly as predict does."""
    return step.full_resolution_probabilities(logits.astype(jnp.float32)[..., None])


def _true_masks(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                chunk: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(names "<subject>_<frame>", masks [n, 420, 580] bool) of `subjects`' frames."""
    ds = pipeline.subject_frames(builder, subjects, decode_images=False)
    ds = ds.map(lambda ex: (ex["subject"], ex["frame"],
                            tf.io.decode_png(ex["mask"], channels=1)[..., 0] > 0),
                tf.data.AUTOTUNE)
    for subject, frame, masks in ds.batch(chunk).prefetch(2).as_numpy_iterator():
        yield [f"{s}_{f}" for s, f in zip(subject, frame, strict=True)], masks


class Fold(NamedTuple):
    workdir: str
    config: ml_collections.ConfigDict
    heldout: evaluation.HeldOut


def load_fold(workdir: str) -> Fold:
    """A workdir's config and held-out predictions, checked against its best checkpoint."""
    config = config_util.load(workdir)
    heldout = evaluation.load_heldout(workdir)
    best = evaluation.best_step(workdir)
    if heldout.step != best:
        raise UserError(
            f"{workdir}/{evaluation.HELDOUT_FILE} was written from checkpoint step "
            f"{heldout.step}, but the best checkpoint (the one predict uses) is now step "
            f"{best}: "
            f"rewrite it with `nerve-jax evaluate --workdir {workdir}`")
    return Fold(workdir, config, heldout)


def check_disjoint(folds: Sequence[Fold]) -> None:
    """Pooled held-out frames must come from different subjects (one workdir per fold)."""
    for i, a in enumerate(folds):
        for b in folds[i + 1:]:
            shared = sorted(set(a.heldout.val_subjects) & set(b.heldout.val_subjects))
            if shared:
                raise UserError(
                    f"{a.workdir} and {b.workdir} hold held-out predictions of the same "
                    f"subjects {shared} (the same fold, or folds of different splits): pass "
                    "one workdir per fold of one split (same num_folds and split_seed)")


def _frames(fold: Fold, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A fold's held-out frames as (probs [n, 420, 580] float32, presence [n], truths [n, 420,
    580] bool), checked one to one against the validation frames of its TFDS data."""
    path = f"{fold.workdir}/{evaluation.HELDOUT_FILE}"
    builder = tfds_builder.prepare_for(fold.config, fold.workdir)
    subjects = evaluation.validation_subjects(fold.config, builder)
    if sorted(subjects) != sorted(fold.heldout.val_subjects):
        raise UserError(f"{path} holds subjects {fold.heldout.val_subjects}, but the workdir's "
                        f"config and data give validation subjects {subjects}: rewrite it with "
                        f"`nerve-jax evaluate --workdir {fold.workdir}`")
    index = {str(name): i for i, name in enumerate(fold.heldout.names)}
    seen = 0
    for names, truths in _true_masks(builder, subjects, chunk):
        missing = [n for n in names if n not in index]
        if missing:
            raise UserError(f"{path} lacks validation frames {missing[:5]} of its TFDS data: "
                            f"rewrite it with `nerve-jax evaluate --workdir {fold.workdir}`")
        rows = np.array([index[n] for n in names])
        yield (np.asarray(_full_resolution(fold.heldout.logits[rows])),
               fold.heldout.presence[rows], truths)
        seen += len(rows)
    if seen != len(index) or seen == 0:
        raise UserError(f"{path} holds {len(index)} frames, its TFDS data {seen} validation "
                        f"frames: rewrite it with `nerve-jax evaluate --workdir {fold.workdir}`")


def fold_table(fold: Fold, grid: Grid, pool: concurrent.futures.Executor | None = None,
               in_flight: int = 4, progress: tqdm | None = None, chunk: int = 32) -> ScoreTable:
    """Scores a fold's held-out predictions against the true masks of its TFDS data; with a
    `pool`, `in_flight` chunks of frames at a time on its processes."""
    if pool is None:
        tables = (score_frames(*frames, grid) for frames in _frames(fold, chunk))
    else:
        tables = _ordered_results(pool, (functools.partial(score_frames, *frames, grid)
                                         for frames in _frames(fold, chunk)), in_flight)
    total = None
    for table in tables:
        total = table if total is None else total + table
        if progress is not None:
            progress.update(table.frames)
    return total


def _ordered_results(pool: concurrent.futures.Executor, calls: Iterator,
                     window: int) -> Iterator:
    """Results of the calls run on `pool`, in order, with at most `window` in flight (each
    holds a chunk of full-resolution frames)."""
    pending = collections.deque()
    for call in calls:
        pending.append(pool.submit(call))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _process_pool(workers: int) -> contextlib.AbstractContextManager:
    if workers <= 1:
        return contextlib.nullcontext()
    # Spawned, not forked: forking a process that runs JAX and TensorFlow threads can hang.
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=runtime.start_tensorflow)


def leave_one_fold_out(tables: Sequence[ScoreTable], grid: Grid,
                       defaults: postprocess.Settings) -> dict:
    """Each fold scored with the settings chosen on the other folds: an estimate of what
    tuning gains on frames it has not seen."""
    per_fold = []
    for i, table in enumerate(tables):
        others = functools.reduce(lambda a, b: a + b, [t for k, t in enumerate(tables) if k != i])
        chosen = best_index(others, grid, defaults)
        per_fold.append({"tuned_dice": table.mean(chosen),
                         "config_dice": table.mean(grid.index(defaults)),
                         "frames": table.frames,
                         "settings": dataclasses.asdict(grid.settings(chosen))})
    frames = sum(f["frames"] for f in per_fold)
    return {"tuned_dice": sum(f["tuned_dice"] * f["frames"] for f in per_fold) / frames,
            "config_dice": sum(f["config_dice"] * f["frames"] for f in per_fold) / frames,
            "per_fold": per_fold}


def tune(workdirs: Sequence[str], grid: Grid = Grid(), write: bool = True,
         workers: int = 1, progress: bool = False, chunk: int = 32) -> dict:
    """Chooses post-processing settings on the pooled held-out predictions of `workdirs` (one
    per fold) and writes them, with how they scored, to postprocess.json in each workdir.
    `workers` > 1 scores `chunk` frames at a time in that many processes (no more processes
    than chunks: each one starts TensorFlow); `progress` shows a progress bar."""
    start = time.perf_counter()
    runtime.start_tensorflow()
    folds = [load_fold(w) for w in workdirs]
    check_disjoint(folds)
    defaults = postprocess.Settings.from_config(folds[0].config)
    grid = grid.including(defaults)
    frames = sum(len(f.heldout.names) for f in folds)
    workers = min(workers, sum(-(-len(f.heldout.names) // chunk) for f in folds))
    with (_process_pool(workers) as pool,
          tqdm(total=frames, desc="tune", unit="frame", disable=not progress) as bar):
        tables = [fold_table(fold, grid, pool, 2 * workers, bar, chunk) for fold in folds]
    pooled = functools.reduce(lambda a, b: a + b, tables)
    chosen_index = best_index(pooled, grid, defaults)
    chosen, default_index = grid.settings(chosen_index), grid.index(defaults)
    folds_report = [{"workdir": f.workdir, "frames": t.frames,
                     "subjects": f.heldout.val_subjects, "step": f.heldout.step,
                     "tta": f.heldout.tta, "tuned_dice": t.mean(chosen_index),
                     "config_dice": t.mean(default_index)} for f, t in zip(folds, tables,
                                                                            strict=True)]
    report = {
        "metric": METRIC,
        "tuned_on": {"workdirs": [fileio.absolute(w) for w in workdirs],
                     "frames": pooled.frames,
                     "subjects": sorted(s for f in folds for s in f.heldout.val_subjects),
                     "tta": sorted({f.heldout.tta for f in folds}),
                     "checkpoint_steps": [f.heldout.step for f in folds]},
        "config_params": dataclasses.asdict(defaults),
        "heldout_dice": {"tuned_in_sample": pooled.mean(chosen_index),
                         "config": pooled.mean(default_index),
                         "all_empty": pooled.empty_sum / pooled.frames,
                         "frames": pooled.frames},
        "leave_one_fold_out_dice": (leave_one_fold_out(tables, grid, defaults)
                                    if len(tables) > 1 else None),
        "folds": folds_report,
        "grid": {name: list(values) for name, values in dataclasses.asdict(grid).items()},
        "grid_points": int(pooled.dice_sum.size),
        "workers": workers,
        "at_grid_edge": grid.at_edge(chosen),
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    differing = [f.workdir for f in folds[1:]
                 if postprocess.Settings.from_config(f.config) != defaults]
    files = [postprocess.save(w, chosen, report) for w in workdirs] if write else []
    return {**report, "settings": chosen, "defaults": defaults, "files": files,
            "configs_differ": differing}
