"""The dataset report: PNG figures, `stats.json` and `index.html` for a Kaggle-layout folder.

One pass decodes every training pair (and test image) in a thread pool, checks it as
`nerve-jax validate-data` does, and keeps only small per-frame summaries (area, centroid,
component count, mean grey level, duplicate signature) and running totals (grey-level
histograms, the summed mask). The handful of frames the galleries show are read again
afterwards. Nothing is written until every file has been checked, and `index.html` is written
last, so its presence marks a finished report.
"""

import concurrent.futures
import dataclasses
import functools
import html
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage
from tqdm import tqdm

from nerve_jax import fileio
from nerve_jax.atomic import atomic_open
from nerve_jax.data import duplicates, kaggle
from nerve_jax.errors import DataError

HEIGHT, WIDTH = kaggle.IMAGE_SHAPE
GREY_LEVELS = 256
PERCENTILES = {"min": 0, "p5": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "max": 100}
CENTROID_CELL = 20  # px; the centroid heat map's bin size
MAX_LISTED_PAIRS = 1000  # in index.html; stats.json lists every pair

SAMPLES_PNG = "samples.png"
SHARE_PNG = "nerve_share_by_subject.png"
AREA_PNG = "mask_area.png"
POSITION_PNG = "mask_position.png"
INTENSITY_PNG = "intensity.png"
PAIRS_PNG = "contradictory_pairs.png"
TEST_PNG = "test_vs_train_intensity.png"

NERVE_COLOUR = "#00ff5f"  # bright green reads on every grey level
BAR_COLOUR = "#3b6ea8"
DPI = 110


# ----------------------------------------------------------------------------------------------
# One pass over the data.


@dataclasses.dataclass(frozen=True)
class FrameSummary:
    """What the report keeps of one training pair.

    `centroid` is (row, col) in pixels, None for an empty mask. `mask_crop` is the mask's
    bounding box ([h, w] bool, [0, 0] when empty) with its top-left corner at `mask_corner`.
    `hist_inside` / `hist_all` are [256] grey-level counts of the image inside the mask / overall.
    `signature` is `duplicates.frame_signature(image)`.
    """

    name: str
    subject: int
    area: int
    centroid: tuple[float, float] | None
    components: int
    mean_grey: float
    hist_inside: np.ndarray
    hist_all: np.ndarray
    mask_crop: np.ndarray
    mask_corner: tuple[int, int]
    signature: np.ndarray


def read_pair(pair: kaggle.TrainPair) -> tuple[np.ndarray, np.ndarray]:
    """([420, 580] uint8 image, [420, 580] bool mask) of one training pair."""
    return kaggle.read_tiff(pair.image_path), kaggle.read_tiff(pair.mask_path) != 0


def grey_histogram(pixels: np.ndarray) -> np.ndarray:
    """[256] int64 counts of uint8 grey levels."""
    return np.bincount(pixels.ravel(), minlength=GREY_LEVELS).astype(np.int64)


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a bool mask."""
    return int(ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))[1])


def summarize_pair(pair: kaggle.TrainPair, image: np.ndarray, mask: np.ndarray) -> FrameSummary:
    """The figures of one pair: image [420, 580] uint8, mask [420, 580] (nonzero = nerve)."""
    mask = mask != 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        top, left = int(rows[0]), int(cols[0])
        crop = mask[top : rows[-1] + 1, left : cols[-1] + 1]
        rr, cc = np.nonzero(crop)
        centroid = (top + float(rr.mean()), left + float(cc.mean()))
    else:
        top, left, crop, centroid = 0, 0, np.zeros((0, 0), dtype=bool), None
    return FrameSummary(
        name=pair.name, subject=pair.subject, area=int(crop.sum()), centroid=centroid,
        components=count_components(crop), mean_grey=float(image.mean()),
        hist_inside=grey_histogram(image[mask]), hist_all=grey_histogram(image),
        mask_crop=crop.copy(), mask_corner=(top, left),
        signature=np.asarray(duplicates.frame_signature(image), dtype=np.float32))


@dataclasses.dataclass(frozen=True)
class TrainScan:
    """Per-frame summaries as arrays ([N] each, in `scan_train` order) and totals.

    `centroids` [N, 2] (row, col), NaN for empty masks; `signatures` [N, D] float32;
    `hist_inside` / `hist_outside` [256] int64 grey-level counts; `mask_sum` [420, 580] int64,
    the number of masks covering each pixel.
    """

    names: list[str]
    subjects: np.ndarray
    areas: np.ndarray
    centroids: np.ndarray
    components: np.ndarray
    mean_grey: np.ndarray
    signatures: np.ndarray
    hist_inside: np.ndarray
    hist_outside: np.ndarray
    mask_sum: np.ndarray

    @property
    def has_nerve(self) -> np.ndarray:
        return self.areas > 0


@dataclasses.dataclass(frozen=True)
class TestScan:
    """`mean_grey` [M] per test image (sorted by id) and `hist` [256] int64 grey-level counts."""

    mean_grey: np.ndarray
    hist: np.ndarray


def _threaded_map(fn: Callable, items: Sequence, workers: int, progress: bool,
                  desc: str) -> Iterator:
    # Pillow releases the GIL while decoding, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="frame",
                        disable=not progress)


def _checked_summary(download: kaggle.Download,
                     pair: kaggle.TrainPair) -> tuple[FrameSummary | None, list]:
    image, mask, problems = download.read_pair(pair)
    return (None, problems) if problems else (summarize_pair(pair, image, mask), [])


def scan_train_frames(download: kaggle.Download, workers: int,
                      progress: bool) -> tuple[TrainScan | None, list]:
    """(TrainScan, []) of the download's training pairs, each checked as it is decoded; (None,
    every problem) when any has one."""
    hist_inside = np.zeros(GREY_LEVELS, dtype=np.int64)
    hist_all = np.zeros(GREY_LEVELS, dtype=np.int64)
    mask_sum = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    rows, signatures, problems = [], [], []
    for s, found in _threaded_map(functools.partial(_checked_summary, download), download.pairs,
                                  workers, progress, "eda: training pairs"):
        problems += found
        if s is None:
            continue
        hist_inside += s.hist_inside
        hist_all += s.hist_all
        (top, left), (h, w) = s.mask_corner, s.mask_crop.shape
        mask_sum[top : top + h, left : left + w] += s.mask_crop
        rows.append((s.name, s.subject, s.area, s.centroid or (np.nan, np.nan), s.components,
                     s.mean_grey))
        signatures.append(s.signature)
    if problems:
        return None, problems
    names, subjects, areas, centroids, components, mean_grey = zip(*rows, strict=True)
    return TrainScan(
        names=list(names), subjects=np.array(subjects, dtype=np.int64),
        areas=np.array(areas, dtype=np.int64), centroids=np.array(centroids, dtype=np.float64),
        components=np.array(components, dtype=np.int64),
        mean_grey=np.array(mean_grey, dtype=np.float64), signatures=np.stack(signatures),
        hist_inside=hist_inside, hist_outside=hist_all - hist_inside, mask_sum=mask_sum), []


def _summarize_test_image(image: kaggle.TestImage) -> tuple[float, np.ndarray | None, list]:
    pixels, problems = kaggle.read_checked(image.path)
    if problems:
        return 0.0, None, problems
    return float(pixels.mean()), grey_histogram(pixels), []


def scan_test_frames(images: Sequence[kaggle.TestImage], workers: int,
                     progress: bool) -> tuple[TestScan | None, list]:
    """(TestScan, []) of the test images, each checked as it is decoded; (None, every
    problem) when any has one."""
    hist = np.zeros(GREY_LEVELS, dtype=np.int64)
    means, problems = [], []
    for mean, counts, found in _threaded_map(_summarize_test_image, images, workers, progress,
                                             "eda: test images"):
        problems += found
        if counts is not None:
            means.append(mean)
            hist += counts
    return (None, problems) if problems else (TestScan(np.array(means, dtype=np.float64),
                                                       hist), [])


# ----------------------------------------------------------------------------------------------
# Numbers.


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """min, p5, p25, p50, p75, p95, max of `values` (None each when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(PERCENTILES)
    return {k: round(float(np.percentile(values, q)), 2) for k, q in PERCENTILES.items()}


def histogram_moments(hist: np.ndarray) -> dict[str, float | None]:
    """Mean and standard deviation of the grey levels counted in a [256] histogram."""
    total = int(hist.sum())
    if total == 0:
        return {"mean": None, "std": None, "pixels": 0}
    levels = np.arange(hist.size, dtype=np.float64)
    mean = float((hist * levels).sum() / total)
    std = float(np.sqrt((hist * (levels - mean) ** 2).sum() / total))
    return {"mean": round(mean, 3), "std": round(std, 3), "pixels": total}


def share_per_subject(subjects: np.ndarray, has_nerve: np.ndarray) -> dict[int, float]:
    """Subject id -> share of its frames whose mask is non-empty, sorted by subject."""
    return {int(s): float(has_nerve[subjects == s].mean()) for s in np.unique(subjects)}


def component_stats(scan: TrainScan, max_listed: int = 50) -> dict:
    nonempty = scan.has_nerve
    counts = scan.components[nonempty]
    odd = [n for n, c, e in zip(scan.names, scan.components, nonempty, strict=True)
           if e and c != 1]
    values, freq = np.unique(counts, return_counts=True)
    return {
        "connectivity": 8,
        "masks_by_component_count": {str(v): int(f) for v, f in zip(values, freq, strict=True)},
        "masks_not_one_component": len(odd),
        "examples_not_one_component": odd[:max_listed],
    }


def pair_record(pair) -> dict:
    return {"subject": int(pair.subject), "with_nerve": str(pair.with_nerve),
            "without_nerve": str(pair.without_nerve), "distance": round(float(pair.distance), 6)}


def compute_stats(scan: TrainScan, test: TestScan | None, pairs: Sequence,
                  threshold: float) -> dict:
    """The numbers behind the figures, JSON-ready (no NaN)."""
    has_nerve = scan.has_nerve
    shares = share_per_subject(scan.subjects, has_nerve)
    share_values = np.array(list(shares.values()))
    areas = scan.areas[has_nerve]
    centroids = scan.centroids[has_nerve]
    return {
        "counts": {
            "train_pairs": len(scan.names),
            "subjects": len(shares),
            "with_nerve": int(has_nerve.sum()),
            "empty": int((~has_nerve).sum()),
            "test_images": 0 if test is None else int(test.mean_grey.size),
        },
        "nerve_share": {
            "overall": round(float(has_nerve.mean()), 4),
            "subject_min": round(float(share_values.min()), 4),
            "subject_median": round(float(np.median(share_values)), 4),
            "subject_max": round(float(share_values.max()), 4),
            "per_subject": {str(s): round(v, 4) for s, v in shares.items()},
        },
        "mask_area_px": percentiles(areas),
        "mask_centroid_px": {"row": percentiles(centroids[:, 0]),
                             "col": percentiles(centroids[:, 1])},
        "mask_pixel_fraction": round(float(scan.areas.sum() / (len(scan.names) * HEIGHT * WIDTH)),
                                     6),
        "components": component_stats(scan),
        "intensity": {
            "train": histogram_moments(scan.hist_inside + scan.hist_outside),
            "inside_nerve": histogram_moments(scan.hist_inside),
            "outside_nerve": histogram_moments(scan.hist_outside),
            "test": None if test is None else histogram_moments(test.hist),
        },
        "contradictory_pairs": {
            "threshold": float(threshold),
            "count": len(pairs),
            "pairs": [pair_record(p) for p in pairs],
        },
    }


def choose_pairs(pairs: Sequence, count: int) -> list:
    """Up to `count` pairs for the gallery: round-robin over subjects, closest first.

    Within a subject one nerve frame often has many empty twins; showing each frame at most
    once and cycling through subjects makes the gallery show different anatomy.
    """
    queues: dict[int, list] = {}
    for pair in sorted(pairs, key=lambda p: (p.subject, p.distance)):
        queues.setdefault(pair.subject, []).append(pair)
    chosen, shown = [], set()
    while len(chosen) < count and any(queues.values()):
        for queue in queues.values():
            while queue and {queue[0].with_nerve, queue[0].without_nerve} & shown:
                queue.pop(0)
            if queue and len(chosen) < count:
                pair = queue.pop(0)
                chosen.append(pair)
                shown |= {pair.with_nerve, pair.without_nerve}
    return chosen


def choose_samples(has_nerve: np.ndarray, count: int) -> list[int]:
    """Indices of up to `count` frames, half with a nerve and half without, spread evenly.

    Deterministic: evenly spaced through each class in scan order, so the gallery covers many
    subjects. A class with too few frames leaves its places to the other.
    """
    nerve, empty = np.flatnonzero(has_nerve), np.flatnonzero(~has_nerve)
    want_nerve = min(nerve.size, max(count - empty.size, (count + 1) // 2))
    want_empty = min(empty.size, count - want_nerve)

    def spread(indices: np.ndarray, k: int) -> list[int]:
        if k == 0:
            return []
        return indices[np.linspace(0, indices.size - 1, k).round().astype(int)].tolist()

    return spread(nerve, want_nerve) + spread(empty, want_empty)


# ----------------------------------------------------------------------------------------------
# Figures. Images are drawn with imshow's default origin: row 0 at the top, columns to the right.


def _show_frame(ax, image: np.ndarray, outline: np.ndarray | None = None,
                dashed: bool = False) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    if outline is not None and outline.any():
        ax.contour(outline.astype(np.float32), levels=[0.5], colors=NERVE_COLOUR,
                   linewidths=1.4, linestyles="--" if dashed else "-")
    ax.set_xticks([])
    ax.set_yticks([])


def samples_figure(frames: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    """Gallery of (name, image, mask) with the mask outlined."""
    ncols = min(4, len(frames))
    nrows = -(-len(frames) // ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.6 * nrows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(frames):]:
        ax.set_axis_off()
    for ax, (name, image, mask) in zip(axes.flat, frames, strict=False):
        _show_frame(ax, image, mask)
        area = int(mask.sum())
        ax.set_title(f"{name}: nerve, {area:,} px" if area else f"{name}: no nerve", fontsize=10)
    fig.suptitle("Training frames (420 x 580) with the annotated nerve outlined in green",
                 fontsize=12)
    return fig


def share_figure(shares: dict[int, float], overall: float) -> Figure:
    subjects = list(shares)
    fig = Figure(figsize=(max(6.0, 0.25 * len(subjects) + 2.0), 4.0), dpi=DPI,
                 layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(subjects))
    ax.bar(x, [100 * shares[s] for s in subjects], color=BAR_COLOUR, width=0.8)
    ax.axhline(100 * overall, color="black", linestyle="--", linewidth=1,
               label=f"all frames: {100 * overall:.1f}%")
    ax.set_xticks(x, [str(s) for s in subjects], fontsize=8)
    ax.set_xlim(-0.6, len(subjects) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("subject")
    ax.set_ylabel("frames with a nerve (%)")
    ax.set_title("Share of frames whose mask is non-empty, per subject")
    ax.legend(loc="upper right", fontsize=9)
    return fig


def area_figure(areas: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.0, 4.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"Area of the {areas.size:,} non-empty masks")
    ax.set_xlabel("mask area (pixels at full 420 x 580 resolution)")
    ax.set_ylabel("masks")
    if areas.size == 0:
        ax.text(0.5, 0.5, "no mask contains a nerve", ha="center", va="center",
                transform=ax.transAxes)
        return fig
    ax.hist(areas, bins=min(40, max(5, areas.size // 5)), color=BAR_COLOUR,
            edgecolor="white", linewidth=0.5)
    for q, style in ((5, ":"), (50, "--"), (95, ":")):
        value = np.percentile(areas, q)
        label = "median" if q == 50 else f"{q}th percentile"
        ax.axvline(value, color="black", linestyle=style, linewidth=1,
                   label=f"{label}: {value:,.0f} px")
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.legend(fontsize=9)
    return fig


def _frame_axes(ax) -> None:
    ax.set_xlabel("column x (px)")
    ax.set_ylabel("row y (px)")
    ax.set_xticks(range(0, WIDTH + 1, 100))
    ax.set_yticks(range(0, HEIGHT + 1, 100))


def position_figure(centroids: np.ndarray, mask_sum: np.ndarray, num_masks: int) -> Figure:
    """Centroid heat map and mean mask, both drawn over the 420 x 580 frame (row 0 at top)."""
    fig = Figure(figsize=(12.0, 4.4), dpi=DPI, layout="constrained")
    ax_c, ax_m = fig.subplots(1, 2)
    extent = (0, WIDTH, HEIGHT, 0)
    counts, _, _ = np.histogram2d(
        centroids[:, 0], centroids[:, 1],
        bins=(HEIGHT // CENTROID_CELL, WIDTH // CENTROID_CELL), range=((0, HEIGHT), (0, WIDTH)))
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="white")
    im = ax_c.imshow(np.ma.masked_equal(counts, 0), extent=extent, cmap=cmap, vmin=0,
                     interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax_c, label=f"masks per {CENTROID_CELL} x {CENTROID_CELL} px cell")
    ax_c.set_title(f"Mask centroids (n = {num_masks:,}; white: none)")
    _frame_axes(ax_c)
    mean_mask = mask_sum / max(1, num_masks)
    im = ax_m.imshow(100 * mean_mask, extent=extent, cmap="viridis", interpolation="nearest",
                     aspect="equal", vmin=0)
    fig.colorbar(im, ax=ax_m, label="non-empty masks covering the pixel (%)")
    ax_m.set_title("Mean of the non-empty masks")
    _frame_axes(ax_m)
    fig.suptitle("Where the nerve is: the full 420 x 580 frame, row 0 at the top", fontsize=12)
    return fig


def _normalised(hist: np.ndarray) -> np.ndarray:
    return 100 * hist / max(1, hist.sum())


def _label_grey_axes(ax, ylabel: str, title: str) -> None:
    """Axes of a normalised grey-level histogram (0-255 on x)."""
    ax.set_xlim(0, 255)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("grey level (0-255)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=9)


def intensity_figure(hist_inside: np.ndarray, hist_outside: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.5, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    levels = np.arange(GREY_LEVELS)
    for hist, label, colour, width, style in (
            (hist_outside, "outside the nerve", "#8fb3dd", 3.0, "-"),
            (hist_inside, "inside the nerve", "#d95f02", 1.4, "-"),
            (hist_inside + hist_outside, "all pixels", "black", 1.0, "--")):
        mean = histogram_moments(hist)["mean"]
        if mean is None:
            continue
        ax.step(levels, _normalised(hist), where="mid", color=colour, linewidth=width,
                linestyle=style, label=f"{label} (mean {mean:.1f})")
    _label_grey_axes(ax, "share of the pixels in the group (%)",
                     "Grey-level histograms of the training images, each normalised to 100%")
    return fig


def pairs_figure(pairs: Sequence, frames: dict[str, tuple[np.ndarray, np.ndarray]],
                 threshold: float, total: int) -> Figure:
    """Each pair: the nerve frame with its outline beside its empty twin (same outline, dashed)."""
    if not pairs:
        fig = Figure(figsize=(7.0, 1.6), dpi=DPI)
        fig.text(0.5, 0.5, f"No contradictory near-duplicate pairs at threshold {threshold:g}",
                 ha="center", va="center", fontsize=12)
        return fig
    fig = Figure(figsize=(8.4, 3.3 * len(pairs) + 0.8), dpi=DPI, layout="constrained")
    fig.suptitle(f"Contradictory near-duplicates: {len(pairs)} of {total:,} pairs "
                 f"(threshold {threshold:g})\nleft: frame whose mask has the nerve (solid "
                 "outline)\nright: its twin whose mask is empty (the left outline, dashed)",
                 fontsize=11)
    for sub, pair in zip(fig.subfigures(len(pairs), 1, squeeze=False)[:, 0], pairs, strict=True):
        ax_nerve, ax_empty = sub.subplots(1, 2)
        image, mask = frames[pair.with_nerve]
        twin, _ = frames[pair.without_nerve]
        _show_frame(ax_nerve, image, mask)
        _show_frame(ax_empty, twin, mask, dashed=True)
        ax_nerve.set_title(f"{pair.with_nerve}: nerve, {int(mask.sum()):,} px", fontsize=10)
        ax_empty.set_title(f"{pair.without_nerve}: empty mask", fontsize=10)
        sub.suptitle(f"subject {pair.subject}, distance {pair.distance:.4g}", fontsize=10)
    return fig


def test_vs_train_figure(train_hist: np.ndarray, test_hist: np.ndarray,
                          train_means: np.ndarray, test_means: np.ndarray) -> Figure:
    fig = Figure(figsize=(12.0, 4.2), dpi=DPI, layout="constrained")
    ax_h, ax_m = fig.subplots(1, 2)
    levels = np.arange(GREY_LEVELS)
    ax_h.step(levels, _normalised(train_hist), where="mid", color=BAR_COLOUR, label="train")
    ax_h.step(levels, _normalised(test_hist), where="mid", color="#d95f02", label="test")
    _label_grey_axes(ax_h, "share of pixels (%)", "Grey levels of all pixels")
    low, high = min(train_means.min(), test_means.min()), max(train_means.max(), test_means.max())
    bins = np.linspace(np.floor(low), np.ceil(high) + 1, 31)
    ax_m.hist(train_means, bins=bins, density=True, color=BAR_COLOUR, alpha=0.6,
              label=f"train ({train_means.size:,} images)")
    ax_m.hist(test_means, bins=bins, density=True, color="#d95f02", alpha=0.6,
              label=f"test ({test_means.size:,} images)")
    ax_m.set_xlabel("mean grey level of an image")
    ax_m.set_ylabel("density (share of images per grey level)")
    ax_m.set_title("Mean grey level per image")
    ax_m.legend(fontsize=9)
    fig.suptitle("Test vs training images", fontsize=12)
    return fig


def save_png(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)


# ----------------------------------------------------------------------------------------------
# The page.

CAPTIONS = {
    SAMPLES_PNG: "Training frames chosen evenly through the data set, half with an annotated "
                 "nerve (green outline) and half without. Look for how faint the nerve is "
                 "against its surroundings and for frames where you would have drawn a mask.",
    SHARE_PNG: "Share of each subject's frames whose mask is non-empty; the dashed line is the "
               "share over all frames. Subjects differ a lot, which is one reason to split "
               "train and validation by subject.",
    AREA_PNG: "Distribution of the area of non-empty masks at full resolution, with the 5th, "
              "50th and 95th percentiles. Tiny predicted components far below the smallest "
              "true masks are likely false positives; this sets the minimum component area.",
    POSITION_PNG: "Left: where mask centroids fall in the frame (row 0 at the top). Right: the "
                  "share of non-empty masks covering each pixel. The nerve sits in a narrow "
                  "band; predictions far outside it deserve suspicion.",
    INTENSITY_PNG: "Grey-level histograms of all training pixels, of pixels inside the "
                   "nerve and outside it, each normalised to 100%. The more these overlap, the "
                   "less a pixel's brightness alone tells you whether it is nerve.",
    PAIRS_PNG: "Near-identical frames of one subject where one mask has the nerve and the other "
               "is empty (the closest pair of each subject in turn, each frame shown once). The "
               "dashed outline on the right copies the left mask: if the nerve is visible under "
               "it, the empty label is probably an annotation miss.",
    TEST_PNG: "Grey levels of test vs training images, over all pixels and as the mean per "
              "image. A shift between them means normalisation or augmentation should cover it.",
}

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { max-width: 60em; color: #444; margin-top: 0.4em; }
"""


def _fmt(value, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def key_rows(stats: dict) -> list[tuple[str, str]]:
    c, share, area = stats["counts"], stats["nerve_share"], stats["mask_area_px"]
    row, col = stats["mask_centroid_px"]["row"], stats["mask_centroid_px"]["col"]
    inten, comp = stats["intensity"], stats["components"]
    pairs = stats["contradictory_pairs"]

    def grey(group: dict | None) -> str:
        if group is None or group["mean"] is None:
            return "n/a"
        return f"{group['mean']:.1f} ± {group['std']:.1f}"

    return [
        ("training pairs / subjects / test images",
         f"{c['train_pairs']:,} / {c['subjects']:,} / {c['test_images']:,}"),
        ("masks with a nerve", f"{c['with_nerve']:,} ({100 * share['overall']:.1f}%)"),
        ("share with a nerve per subject: min / median / max",
         f"{100 * share['subject_min']:.1f}% / {100 * share['subject_median']:.1f}% / "
         f"{100 * share['subject_max']:.1f}%"),
        ("mask area (px): min / 5% / 25% / median / 75% / 95% / max",
         " / ".join(_fmt(area[k]) for k in PERCENTILES)),
        ("centroid row (px): 5% / median / 95%",
         " / ".join(_fmt(row[k]) for k in ("p5", "p50", "p95"))),
        ("centroid col (px): 5% / median / 95%",
         " / ".join(_fmt(col[k]) for k in ("p5", "p50", "p95"))),
        ("positive pixels (all training frames)", f"{100 * stats['mask_pixel_fraction']:.2f}%"),
        ("masks with other than one component (8-connected)",
         f"{comp['masks_not_one_component']:,}"),
        ("grey level mean ± std: all / inside / outside nerve",
         f"{grey(inten['train'])} / {grey(inten['inside_nerve'])} / "
         f"{grey(inten['outside_nerve'])}"),
        ("grey level mean ± std: test", grey(inten["test"])),
        ("contradictory near-duplicate pairs",
         f"{pairs['count']:,} (threshold {pairs['threshold']:g})"),
        ("report runtime", f"{stats['runtime_seconds']:.1f} s"),
    ]


def render_html(stats: dict, kaggle_dir: str) -> str:
    esc = html.escape
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td class='num'>{esc(v)}</td></tr>"
                     for k, v in key_rows(stats))
    figures = "\n".join(
        f"<figure><img src='{esc(name)}' alt='{esc(name)}'>"
        f"<figcaption>{esc(CAPTIONS[name])}</figcaption></figure>" for name in stats["figures"])
    pair_rows = "\n".join(
        f"<tr><td class='num'>{p['subject']}</td><td>{esc(p['with_nerve'])}</td>"
        f"<td>{esc(p['without_nerve'])}</td><td class='num'>{p['distance']:.4g}</td></tr>"
        for p in stats["contradictory_pairs"]["pairs"][:MAX_LISTED_PAIRS])
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Dataset report: {esc(kaggle_dir)}</title>
<style>{PAGE_STYLE}</style></head>
<body>
<h1>Dataset report</h1>
<p>Folder: <code>{esc(kaggle_dir)}</code>. The numbers behind every figure are in
<a href="stats.json">stats.json</a>.</p>
<h2>Key numbers</h2>
<table>
{rows}
</table>
<h2>Figures</h2>
{figures}
<h2>Contradictory pairs</h2>
<details><summary>{stats["contradictory_pairs"]["count"]:,} pairs, sorted by subject and
distance (click to show; the page lists the first {MAX_LISTED_PAIRS:,}, stats.json all)</summary>
<table>
<tr><th>subject</th><th>with nerve</th><th>without nerve</th><th>distance</th></tr>
{pair_rows}
</table>
</details>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------
# Entry point.


def _check_progress(enabled: bool) -> Callable | None:
    if not enabled:
        return None
    return lambda results, total: tqdm(results, total=total, desc="checking files", unit="file")


def write_report(kaggle_dir: str, out_dir: str, *, duplicate_threshold: float | None = None,
                 workers: int = 0, progress: bool = True, max_samples: int = 8) -> dict:
    """Writes the dataset report of a Kaggle-layout folder into `out_dir`; returns its stats.

    Writes the PNG figures, `stats.json` (the returned dict) and `index.html` (last). Checks
    every file first and raises DataError, writing nothing, on any problem. `workers` threads
    decode (0: one per CPU); `max_samples` frames and contradictory pairs are shown in the
    galleries; `duplicate_threshold` None uses `duplicates.DEFAULT_THRESHOLD`.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    start = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    threshold = duplicates.DEFAULT_THRESHOLD if duplicate_threshold is None else duplicate_threshold
    download, problems = kaggle.inspect(kaggle_dir, decode=False)
    if problems:  # Names, pairing, CSVs: list every problem, the TIFFs' too.
        kaggle.check_download(kaggle_dir, workers=workers, progress=_check_progress(progress))
    pairs, test_images = download.pairs, download.tests or None
    checked = time.perf_counter()

    # Each TIFF is checked as it is decoded for its figures.
    scan, problems = scan_train_frames(download, workers, progress)
    test, found = (scan_test_frames(test_images, workers, progress) if test_images
                   else (None, []))
    if problems + found:
        raise DataError(f"{kaggle_dir}: {len(problems + found)} problem(s) in the Kaggle data",
                        problems + found)
    contradictory = duplicates.find_contradictory_pairs(
        scan.names, scan.subjects, scan.has_nerve, scan.signatures, threshold=threshold)
    stats = compute_stats(scan, test, contradictory, threshold)
    summarised = time.perf_counter()

    fileio.makedirs(out_dir)
    stats["figures"] = write_figures(out_dir, pairs, scan, test, contradictory, threshold,
                                     stats, max_samples)
    done = time.perf_counter()
    frames = len(pairs) + (len(test_images) if test_images else 0)
    stats["runtime_seconds"] = round(done - start, 3)
    stats["timing_seconds"] = {
        "check_files": round(checked - start, 3),
        "summarise": round(summarised - checked, 3),
        "figures": round(done - summarised, 3),
        "check_and_summarise_ms_per_frame": round(1000 * (summarised - start) / max(1, frames),
                                                  3),
    }
    stats["kaggle_dir"] = fileio.absolute(kaggle_dir)
    with atomic_open(fileio.join(out_dir, "stats.json")) as f:
        json.dump(stats, f, indent=1, allow_nan=False)
        f.write("\n")
    with atomic_open(fileio.join(out_dir, "index.html"), encoding="utf-8") as f:
        f.write(render_html(stats, kaggle_dir))
    return stats


def write_figures(out_dir: str, pairs: Sequence[kaggle.TrainPair], scan: TrainScan,
                  test: TestScan | None, contradictory: Sequence, threshold: float,
                  stats: dict, max_samples: int) -> list[str]:
    """Renders every figure into `out_dir`; returns their file names in page order."""
    by_name = {p.name: p for p in pairs}
    samples = [(pairs[i].name, *read_pair(pairs[i]))
               for i in choose_samples(scan.has_nerve, max_samples)]
    shown = choose_pairs(contradictory, max_samples)
    pair_frames = {n: read_pair(by_name[n])
                   for p in shown for n in (p.with_nerve, p.without_nerve)}
    has_nerve = scan.has_nerve
    shares = {int(s): v for s, v in stats["nerve_share"]["per_subject"].items()}
    figures = {
        SAMPLES_PNG: samples_figure(samples),
        SHARE_PNG: share_figure(shares, stats["nerve_share"]["overall"]),
        AREA_PNG: area_figure(scan.areas[has_nerve]),
        POSITION_PNG: position_figure(scan.centroids[has_nerve], scan.mask_sum,
                                      int(has_nerve.sum())),
        INTENSITY_PNG: intensity_figure(scan.hist_inside, scan.hist_outside),
        PAIRS_PNG: pairs_figure(shown, pair_frames, threshold, len(contradictory)),
    }
    if test is not None:
        figures[TEST_PNG] = test_vs_train_figure(scan.hist_inside + scan.hist_outside,
                                                  test.hist, scan.mean_grey, test.mean_grey)
    for name, fig in figures.items():
        save_png(fig, fileio.join(out_dir, name))
    return list(figures)
