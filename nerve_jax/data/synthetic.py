"""A deterministic look-alike of the Kaggle "Ultrasound Nerve Segmentation" data.

`generate` writes the Kaggle layout (`train/<subject>_<frame>[_mask].tif`, `test/<id>.tif`,
`train_masks.csv`, `sample_submission.csv`) plus `synthetic_truth.json` (seed, parameters,
injected label errors, test subjects) and `synthetic_test_masks.csv` (the test labels, in
submission format). Label statistics follow docs/data.md.

Image model, in log-amplitude units (nepers) until the final display mapping:
- per subject a tissue map on a canvas larger than the image by MARGIN on each side: regional
  echogenicity; tissue layers, each with its own level and amount of a streaky echo texture
  (power-law noise, ~4x longer than thick, whose bright tail makes saturated specular streaks);
  wavy bright fascia (most near the top); anechoic vessels with bright walls and posterior
  enhancement; an optional rib with acoustic shadow; dark blobs and honeycomb-like decoy
  clusters; and (separately) the nerve: a slightly brighter, finely textured oval of dark
  fascicles that replaces most of the tissue under it, like the decoys;
- per frame the probe moves along a smooth per-subject trajectory (an integer crop of the canvas),
  the nerve is drawn when the frame's presence chain says so, then correlated Rayleigh speckle
  (smooth along rows, sharp across them; it moves with the tissue and partly renews each frame,
  and the scanner's speckle reduction keeps part of it), depth attenuation, darker sides, log
  compression to uint8 and the top-centre marker.

The texture statistics (grey levels, local std, autocorrelation, neighbour differences, power
spectrum, nerve contrast) fall in the real frames' 10th-90th percentile bands; docs/data.md,
"Texture of the synthetic frames", has both. At the default `nerve_contrast` the nerve is not
obvious and resembles the decoys, yet the quickstart's small UNet at 96x128 learns it (Kaggle
Dice 0.75 on held-out subjects against 0.56 for all-empty; docs/ablation.md).

Randomness comes only from `np.random.SeedSequence([seed, domain, subject, stream, frame])`, so a
subject's output depends on (seed, subject, parameters) alone: identical for any `workers`.
"""

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from nerve_jax import rle
from nerve_jax.atomic import atomic_open
from nerve_jax.data.kaggle import HEIGHT, WIDTH, write_tiff

TRUTH_FILE = "synthetic_truth.json"
TEST_MASKS_FILE = "synthetic_test_masks.csv"
DEFAULT_NERVE_CONTRAST = 1.0
# Raised whenever the frames a seed gives change, so caches keyed on it are not reused.
GENERATOR_VERSION = 2

MARGIN = 28  # canvas border for probe motion (px); the trajectory stays within it
CANVAS_SHAPE = (HEIGHT + 2 * MARGIN, WIDTH + 2 * MARGIN)

TRAIN, TEST = 0, 1  # subject domains: test subjects never share anatomy with train ones
SPEC, CANVAS, FRAME, LABEL, TWIN, ORDER = range(6)  # random streams

_EULER_GAMMA = 0.5772156649015329
_SPECKLE_SIGMA = (1.5, 3.3)  # rows, cols: ultrasound speckle is elongated laterally
# Share of the log speckle amplitude left after the scanner's speckle reduction: the real frames'
# local std is about a third of their std, most of which is tissue structure.
_SPECKLE_KEPT = 0.55
_TISSUE_COVERED = 0.6  # share of the tissue under the nerve (or a decoy) its pattern replaces
SPECKLE_PERSISTENCE = 0.97  # correlation of the scatterers between frames at the same position


@dataclasses.dataclass(frozen=True)
class Ellipse:
    """An ellipse in pixel coordinates; `angle` (radians) is the major axis' tilt from the rows."""

    row: float
    col: float
    semi_major: float
    semi_minor: float
    angle: float


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """One frame of a subject's sequence.

    `time` is the position on the probe trajectory; `labelled` is whether the mask holds the
    nerve. A contradictory twin shows the nerve (`nerve_visible`) but has an empty mask and
    `twin_of` names the frame it copies.
    """

    frame: int
    time: float
    nerve_visible: bool
    labelled: bool
    twin_of: int | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class SubjectSpec:
    """The cheap, label-determining part of a subject: nerve, probe motion, frame plan.

    `nerve` is in canvas coordinates at zero probe shift. `motion` is [4, 2, 3]: for probe
    rows, probe cols, nerve rows, nerve cols, two sinusoids of (amplitude px, frequency per
    frame, phase).
    """

    seed: int
    domain: int
    subject: int
    nerve_share: float
    nerve: Ellipse
    motion: np.ndarray
    frames: tuple[FrameSpec, ...]


@dataclasses.dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote and the label statistics of its training set."""

    out_dir: str
    num_subjects: int
    num_train_images: int
    num_test_images: int
    share_empty: float
    subject_share_min: float
    subject_share_median: float
    subject_share_max: float
    median_area: float
    num_contradictory_pairs: int
    seconds: float
    ms_per_image: float

    def __str__(self) -> str:
        return (f"{self.num_train_images} training frames of {self.num_subjects} subjects and "
                f"{self.num_test_images} test images in {self.seconds:.1f} s "
                f"({self.ms_per_image:.1f} ms per image)\n"
                f"frames without a nerve: {self.share_empty:.1%}; frames with one per subject: "
                f"{self.subject_share_min:.0%} to {self.subject_share_max:.0%} (median "
                f"{self.subject_share_median:.0%}); median nerve area {self.median_area:.0f} px; "
                f"{self.num_contradictory_pairs} contradictory near-duplicate pairs")


def _rng(seed: int, domain: int, subject: int, stream: int, frame: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, domain, subject, stream, frame]))


# ----------------------------------------------------------------------------------------------
# Subject plan: nerve geometry, probe motion, presence chain, contradictory twins.


def _split_normal(rng: np.random.Generator, median: float, sd_low: float, sd_high: float) -> float:
    z = rng.standard_normal()
    return median + z * (sd_low if z < 0 else sd_high)


def _draw_nerve(rng: np.random.Generator) -> Ellipse:
    """Nerve ellipse in canvas coordinates, matching docs/data.md's area, shape and centroids."""
    # Student-t (4 dof) log-area: the real tails are heavier than a log-normal's.
    area = float(np.clip(6976.0 * math.exp(0.14 * rng.standard_t(4)), 2900.0, 16000.0))
    ratio = float(np.clip(rng.normal(1.9, 0.3), 1.3, 2.8))
    semi_minor = math.sqrt(area / (math.pi * ratio))
    row = float(np.clip(_split_normal(rng, 165.0, 33.0, 33.0), 62.0, 320.0))
    col = float(np.clip(_split_normal(rng, 363.0, 55.0, 20.0), 130.0, 470.0))
    angle = float(rng.normal(math.pi / 2 - 0.1, 0.3))  # mostly lying horizontally
    return Ellipse(row + MARGIN, col + MARGIN, ratio * semi_minor, semi_minor, angle)


def _draw_motion(rng: np.random.Generator) -> np.ndarray:
    """[4, 2, 3] sinusoids (amplitude, frequency, phase) for probe row/col and nerve row/col."""
    amplitude = np.array([[6.0, 3.0], [11.0, 5.0], [1.5, 1.0], [2.0, 1.0]])
    amplitude *= rng.uniform(0.5, 1.0, size=(4, 2))
    frequency = np.stack([rng.uniform(1 / 90, 1 / 45, 4), rng.uniform(1 / 30, 1 / 15, 4)], 1)
    phase = rng.uniform(0.0, 2 * math.pi, size=(4, 2))
    return np.stack([amplitude, frequency, phase], axis=-1)


def _offsets(motion: np.ndarray, t: float) -> np.ndarray:
    """[4] probe row, probe col, nerve row, nerve col offsets (px) at trajectory time t."""
    amp, freq, phase = motion[..., 0], motion[..., 1], motion[..., 2]
    return (amp * np.sin(2 * math.pi * freq * t + phase)).sum(axis=1)


def _presence_chain(rng: np.random.Generator, share: float, n: int) -> np.ndarray:
    """[n] bool Markov chain with stationary probability `share`; runs last ~3-8+ frames."""
    persistence = rng.uniform(3.0, 8.0)
    leave, enter = (1.0 - share) / persistence, share / persistence
    u = rng.random(n)
    state = np.empty(n, dtype=bool)
    state[0] = u[0] < share
    for i in range(1, n):
        state[i] = u[i] >= leave if state[i - 1] else u[i] < enter
    return state


def _inject_twins(rng: np.random.Generator, frames: list[FrameSpec],
                  rate: float) -> list[FrameSpec]:
    """Replaces empty frames by near-identical, unlabelled twins of a `rate` share of nerve frames.

    Replacing empty frames keeps the frame count and the share of empty masks unchanged; twins
    are dropped when a subject runs out of empty frames.
    """
    frames = list(frames)
    free = [f.frame for f in frames if not f.nerve_visible]
    for source in [f for f in frames if f.labelled]:
        if rng.random() >= rate or not free:
            continue
        target = free.pop(int(rng.integers(len(free))))
        # Same probe position: the twin differs only by renewed speckle and gain.
        frames[target - 1] = FrameSpec(target, source.time, True, False, twin_of=source.frame)
    return frames


def subject_spec(seed: int, domain: int, subject: int, num_frames: int,
                 contradictory_rate: float = 0.0) -> SubjectSpec:
    """Draws a subject's nerve, probe motion and frame plan (cheap; no pixels)."""
    rng = _rng(seed, domain, subject, SPEC)
    share = float(np.clip(rng.beta(1.5, 2.1), 0.03, 0.88))
    nerve = _draw_nerve(rng)
    motion = _draw_motion(rng)
    present = _presence_chain(rng, share, num_frames)
    frames = [FrameSpec(i + 1, float(i), bool(p), bool(p)) for i, p in enumerate(present)]
    if contradictory_rate > 0:
        frames = _inject_twins(_rng(seed, domain, subject, TWIN), frames, contradictory_rate)
    return SubjectSpec(seed, domain, subject, share, nerve, motion, tuple(frames))


def _frame_geometry(spec: SubjectSpec, fs: FrameSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """(probe shift, nerve shift relative to the anatomy), both integer (rows, cols)."""
    off = _offsets(spec.motion, fs.time)
    return (round(off[0]), round(off[1])), (round(off[2]), round(off[3]))


def _ellipse_mask(e: Ellipse, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """[H, W] bool filled ellipse, clipped to the image."""
    mask = np.zeros(shape, dtype=bool)
    sin, cos = math.sin(e.angle), math.cos(e.angle)
    half_r = math.hypot(e.semi_major * cos, e.semi_minor * sin)
    half_c = math.hypot(e.semi_major * sin, e.semi_minor * cos)
    r0, r1 = max(0, math.floor(e.row - half_r)), min(shape[0], math.ceil(e.row + half_r) + 1)
    c0, c1 = max(0, math.floor(e.col - half_c)), min(shape[1], math.ceil(e.col + half_c) + 1)
    if r0 >= r1 or c0 >= c1:
        return mask
    dr = np.arange(r0, r1, dtype=np.float32)[:, None] - e.row
    dc = np.arange(c0, c1, dtype=np.float32)[None, :] - e.col
    u = (dr * cos + dc * sin) / e.semi_major
    v = (dc * cos - dr * sin) / e.semi_minor
    mask[r0:r1, c0:c1] = u * u + v * v <= 1.0
    return mask


def frame_mask(spec: SubjectSpec, fs: FrameSpec) -> np.ndarray:
    """[420, 580] bool label of a frame: the nerve ellipse (annotator-jittered) or empty."""
    if not fs.labelled:
        return np.zeros((HEIGHT, WIDTH), dtype=bool)
    rng = _rng(spec.seed, spec.domain, spec.subject, LABEL, fs.frame)
    (pr, pc), (nr, nc) = _frame_geometry(spec, fs)
    n = spec.nerve
    jitter = rng.normal(0.0, [1.0, 1.0, 0.06, 0.06, 0.04])
    e = Ellipse(n.row - MARGIN - pr + nr + jitter[0], n.col - MARGIN - pc + nc + jitter[1],
                n.semi_major * (1 + jitter[2]), n.semi_minor * (1 + jitter[3]),
                n.angle + jitter[4])
    return _ellipse_mask(e)


def iter_train_masks(num_subjects: int, frames_per_subject: int, seed: int = 0,
                     contradictory_rate: float = 0.0) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields (subject, frame, [420, 580] bool mask) exactly as `generate` labels them."""
    for subject in range(1, num_subjects + 1):
        spec = subject_spec(seed, TRAIN, subject, frames_per_subject, contradictory_rate)
        for fs in spec.frames:
            yield subject, fs.frame, frame_mask(spec, fs)


# ----------------------------------------------------------------------------------------------
# Subject anatomy: the canvas of log echogenicity and the nerve pattern.


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(shape[0], dtype=np.float32)[:, None],
            np.arange(shape[1], dtype=np.float32)[None, :])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma: tuple[float, float]) -> np.ndarray:
    """[*shape] float32 Gaussian-filtered white noise with unit standard deviation.

    Large blurs are done on a coarser grid and upsampled, which looks the same and is faster.
    """
    step = [max(1, int(s // 3)) for s in sigma]
    small = [-(-n // k) + 2 for n, k in zip(shape, step, strict=True)]
    field = ndimage.gaussian_filter(rng.standard_normal(small, dtype=np.float32),
                                    [s / k for s, k in zip(sigma, step, strict=True)], mode="wrap")
    if step != [1, 1]:
        field = ndimage.zoom(field, step, order=1, mode="nearest", grid_mode=True)
    field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _wavy_curve(rng: np.random.Generator, width: int, base: float, amplitude: float) -> np.ndarray:
    """[width] float32 row position of a smooth, irregular line around `base`, slightly tilted."""
    x = np.arange(width, dtype=np.float32) - width / 2
    slow = _smooth_noise(rng, (1, width), (1.0, 110.0))[0]
    fast = _smooth_noise(rng, (1, width), (1.0, 25.0))[0]
    return base + rng.uniform(-0.08, 0.08) * x + amplitude * (0.8 * slow + 0.25 * fast)


def _fascia(rng: np.random.Generator, rows: np.ndarray, center: np.ndarray, width: float,
            strength: float) -> np.ndarray:
    """[H, W] bright band along `center` (per column) with gaps and an uneven lateral extent."""
    along = np.clip(0.6 + 0.9 * _smooth_noise(rng, (1, center.size), (1.0, 25.0)), 0.0, 1.0)
    return strength * along * np.exp(-(((rows - center[None, :]) / width) ** 2))


def _power_law_noise(rng: np.random.Generator, shape: tuple[int, int],
                     lengths: tuple[float, float], slope: float) -> np.ndarray:
    """[*shape] float32 Gaussian noise with unit std, periodic, at all scales.

    Its power spectrum is flat below 1/lengths (rows, cols) cycles per px and falls as
    |f|**slope above, so blobs are lengths[1] / lengths[0] times longer than thick.
    """
    freq_rows = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None] * lengths[0]
    freq_cols = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :] * lengths[1]
    amplitude = (1.0 + freq_rows**2 + freq_cols**2) ** np.float32(slope / 4)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32)) * amplitude,
                          s=shape)
    return (field - field.mean()) / field.std()


def _tissue_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """[*shape] float32 streaky tissue echoes: power-law noise, bright tail stretched, dark one
    compressed.

    The real frames' radial power spectrum is a power law and their autocorrelation ~4x longer
    along rows than across; the bright tail makes the often saturated specular streaks, and the
    real frames have more pixels above 200 than a symmetric texture of their std would.
    """
    field = _power_law_noise(rng, shape, (24.0, 105.0), -6.0)
    return field + 2.4 * np.maximum(field - 1.0, 0.0) + 0.5 * np.maximum(-1.0 - field, 0.0)


def _blobs(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, centers: np.ndarray,
           radii: np.ndarray, core: float, rim: float) -> np.ndarray:
    """[H, W] dark, slightly oval blobs (depth ~`core`) with bright rims (~`rim`).

    `rows` [H, 1] and `cols` [1, W] are the grid; `centers` [n, 2] and `radii` [n] in its
    coordinates. Each blob gets its own strength and shape and is evaluated only in its window.
    """
    out = np.zeros((rows.shape[0], cols.shape[1]), dtype=np.float32)
    strengths = rng.uniform(0.6, 1.2, len(radii))
    stretches = np.exp(rng.normal(0.0, 0.15, len(radii)))
    for (r, c), rad, strength, stretch in zip(centers, radii, strengths, stretches, strict=True):
        lo_r, hi_r = max(0, int(r - rad - 5)), min(out.shape[0], int(r + rad + 6))
        lo_c, hi_c = max(0, int(c - rad - 5)), min(out.shape[1], int(c + rad + 6))
        if lo_r >= hi_r or lo_c >= hi_c:
            continue
        d = np.hypot((rows[lo_r:hi_r] - r) * stretch, (cols[:, lo_c:hi_c] - c) / stretch)
        inside = np.clip(1.3 - d / rad, 0.0, 1.0) ** 0.8
        ring = np.exp(-(((d - rad - 0.5) / 1.6) ** 2))
        window = out[lo_r:hi_r, lo_c:hi_c]
        window += strength * (core * inside + rim * ring * (1.0 - inside))
    return out


def _pack_in_ellipse(rng: np.random.Generator, e: Ellipse, count: int, r_range: tuple[float, float],
                     fill: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping circles inside ellipse `e`: ([n, 2] centers, [n] radii), n <= count."""
    centers, radii = [], []
    sin, cos = math.sin(e.angle), math.cos(e.angle)
    for _ in range(count * 30):
        if len(radii) == count:
            break
        rad = rng.uniform(*r_range)
        rho, phi = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        u = rho * math.cos(phi) * max(e.semi_major * fill - rad, 0.0)
        v = rho * math.sin(phi) * max(e.semi_minor * fill - rad, 0.0)
        r, c = e.row + u * cos - v * sin, e.col + u * sin + v * cos
        if all(math.hypot(r - r2, c - c2) >= rad + rad2 + 2.5
               for (r2, c2), rad2 in zip(centers, radii, strict=True)):
            centers.append((r, c))
            radii.append(rad)
    return np.asarray(centers, dtype=np.float32).reshape(-1, 2), np.asarray(radii, np.float32)


def _normalized_radius(rows: np.ndarray, cols: np.ndarray, e: Ellipse) -> np.ndarray:
    """[H, W] elliptic radius: 1 on the boundary of `e`, 0 at its centre."""
    sin, cos = math.sin(e.angle), math.cos(e.angle)
    dr, dc = rows - e.row, cols - e.col
    return np.hypot((dr * cos + dc * sin) / e.semi_major, (dc * cos - dr * sin) / e.semi_minor)


def _honeycomb(rng: np.random.Generator, e: Ellipse, count: int, core: float, rim: float,
               bundle: float, sheath: float,
               grain: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Fascicles in ellipse `e`: ([h, w] float32 patch, [h, w] cover, (row, col) of the corner).

    The patch replaces a share `cover` (_TISSUE_COVERED inside the oval, fading over its edge) of
    the tissue under it.
    `bundle` brightens the whole oval, `sheath` draws a patchy bright outer rim (epineurium),
    `grain` scales a fine texture inside (connective tissue between the fascicles).
    """
    pad = 8
    half = max(e.semi_major, e.semi_minor)
    r0, c0 = int(e.row - half - pad), int(e.col - half - pad)
    size = int(2 * half + 2 * pad) + 1
    rows, cols = _grid((size, size))
    rows, cols = rows + r0, cols + c0
    rho = _normalized_radius(rows, cols, e)
    inside = np.clip((1.0 - rho) * e.semi_minor / 3.0 + 0.5, 0.0, 1.0)
    fade = np.clip((1.0 - rho) * e.semi_minor / 10.0 + 0.3, 0.0, 1.0)  # blurs the oval's edge
    phi = np.arctan2(rows - e.row, cols - e.col)
    arcs = np.clip(0.55 + 0.45 * np.cos(2 * phi + rng.uniform(0, 6.3))
                   + 0.35 * np.cos(3 * phi + rng.uniform(0, 6.3)), 0.0, 1.0)
    ring = np.exp(-((((rho - 1.0) * e.semi_minor) / 2.2) ** 2))
    centers, radii = _pack_in_ellipse(rng, e, count, (2.5, 6.0), fill=0.85)
    patch = (bundle + grain * _power_law_noise(rng, (size, size), (5.0, 15.0), -5.0)) * fade
    patch += sheath * arcs * ring
    patch += _blobs(rng, rows - r0, cols - c0, centers - [r0, c0], radii, core, rim) * inside
    return patch.astype(np.float32), (_TISSUE_COVERED * fade).astype(np.float32), (r0, c0)


def _fascicle_count(rng: np.random.Generator, e: Ellipse) -> int:
    """Number of fascicles to pack in ellipse `e`: ~14-26 in a nerve of median area."""
    return round(math.pi * e.semi_major * e.semi_minor * rng.uniform(0.002, 0.0037))


def _blend_patch(target: np.ndarray, patch: np.ndarray, cover: np.ndarray,
                 corner: tuple[int, int]) -> None:
    """target = target * (1 - cover) + patch over the window at `corner`, clipped (in place)."""
    r0, c0 = corner
    r1, c1 = r0 + patch.shape[0], c0 + patch.shape[1]
    tr0, tc0, tr1, tc1 = max(r0, 0), max(c0, 0), min(r1, target.shape[0]), min(c1, target.shape[1])
    if tr0 < tr1 and tc0 < tc1:
        window = (slice(tr0 - r0, tr1 - r0), slice(tc0 - c0, tc1 - c0))
        target[tr0:tr1, tc0:tc1] *= 1.0 - cover[window]
        target[tr0:tr1, tc0:tc1] += patch[window]


def _outside(e: Ellipse, row: float, col: float, pad: float) -> bool:
    """Whether (row, col) lies outside ellipse `e` grown by `pad` px."""
    grown = dataclasses.replace(e, semi_major=e.semi_major + pad, semi_minor=e.semi_minor + pad)
    return float(_normalized_radius(np.float32(row), np.float32(col), grown)) > 1.0


def _place(rng: np.random.Generator, keep_out: list[tuple[Ellipse, float]], radius: float,
           row_range: tuple[float, float],
           col_range: tuple[float, float]) -> tuple[float, float] | None:
    """A random (row, col) whose disc of `radius` clears every (ellipse, pad), or None."""
    for _ in range(100):
        row, col = rng.uniform(*row_range), rng.uniform(*col_range)
        if all(_outside(e, row, col, radius + pad) for e, pad in keep_out):
            return row, col
    return None


def _vessel(rows: np.ndarray, cols: np.ndarray, e: Ellipse,
            depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Anechoic vessel: ([H, W] lumen weight, [H, W] log echogenicity it adds).

    The lumen replaces the tissue (weight 1 inside) by -`depth`; a bright wall surrounds it and
    posterior acoustic enhancement brightens the tissue below.
    """
    rho = _normalized_radius(rows, cols, e)
    lumen = np.clip((1.0 - rho) * e.semi_minor / 1.5 + 0.5, 0.0, 1.0)
    wall = np.exp(-((((rho - 1.0) * e.semi_minor) / 2.0) ** 2))
    below = rows - e.row
    half_width = max(e.semi_major, e.semi_minor) * 0.8
    beam = np.clip((half_width - np.abs(cols - e.col)) / 6.0, 0.0, 1.0)
    enhancement = 0.6 * beam * (below > 0) * np.exp(-np.maximum(below, 0) / 55.0) * (1 - lumen)
    return lumen, -depth * lumen + wall * (1 - lumen) + enhancement


def _rib(rng: np.random.Generator, rows: np.ndarray, width: int) -> np.ndarray:
    """[H, W] bright curved bone line deep in the image with its acoustic shadow below."""
    line = _wavy_curve(rng, width, MARGIN + rng.uniform(320, 390), 14.0)
    lo, hi = sorted(rng.uniform(0, width, 2))
    extent = np.clip(np.minimum(np.arange(width) - lo, hi - np.arange(width)) / 20.0, 0.0, 1.0)
    below = rows - line[None, :]
    bone = 1.1 * np.exp(-((below / 3.0) ** 2))
    shadow = -1.4 * np.clip(below / 8.0, 0.0, 1.0)
    return (bone + shadow) * extent[None, :].astype(np.float32)


def _soft_tissue(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """[H + 2*MARGIN, W + 2*MARGIN] log echogenicity of the tissue layers, `rows` [H + 2*MARGIN, 1].

    Layers of different echogenicity and texture (muscle vs fat), separated by bright wavy fascia
    (mostly near the top, often saturated), under a bright skin line.
    """
    w = CANVAS_SHAPE[1]
    bases = np.sort(np.concatenate([rng.uniform(15, 150, rng.integers(3, 7)),
                                    rng.uniform(150, 380, rng.integers(1, 4))]))
    curves = [_wavy_curve(rng, w, MARGIN + base, rng.uniform(2, 14)) for base in bases]
    layer = np.zeros(CANVAS_SHAPE, dtype=np.int64)
    for curve in curves:
        layer += rows > curve[None, :]
    levels = rng.normal(0.0, 0.3, len(curves) + 1).astype(np.float32)
    texture = rng.uniform(0.6, 1.2, len(curves) + 1).astype(np.float32)
    out = ndimage.uniform_filter(levels[layer], 5)
    out += ndimage.uniform_filter(texture[layer], 5) * _tissue_texture(rng, CANVAS_SHAPE)
    out += _fascia(rng, rows, _wavy_curve(rng, w, MARGIN + rng.uniform(3, 9), 1.5), 2.5, 1.6)
    for curve, base in zip(curves, bases, strict=True):
        strength = rng.uniform(2.5, 4.0) if base < 150 else rng.uniform(1.2, 2.2)
        out += _fascia(rng, rows, curve, rng.uniform(2.0, 4.5), strength)
    return out


def _canvas(seed: int, domain: int, subject: int, nerve: Ellipse) -> np.ndarray:
    """[H + 2*MARGIN, W + 2*MARGIN] float32 log echogenicity of the subject (without the nerve)."""
    rng = _rng(seed, domain, subject, CANVAS)
    w = CANVAS_SHAPE[1]
    rows, cols = _grid(CANVAS_SHAPE)
    out = 0.15 * _smooth_noise(rng, CANVAS_SHAPE, (35.0, 50.0))
    out += _soft_tissue(rng, rows)
    if rng.random() < 0.5:
        out += _rib(rng, rows, w)
    # Vessels: usually an artery beside the nerve, plus a few smaller ones anywhere.
    keep_out = [(nerve, 8.0)]
    vessels = []
    if rng.random() < 0.8:
        radius = rng.uniform(14, 30)
        side = -1.0 if rng.random() < 0.75 else 1.0
        col = nerve.col + side * (nerve.semi_major * 0.8 + radius + rng.uniform(8, 25))
        row = nerve.row + rng.uniform(-15, 35)
        vessels.append(Ellipse(row, col, radius, radius * rng.uniform(0.75, 1.0), 0.0))
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(7, 22)
        spot = _place(rng, keep_out + [(v, 6.0) for v in vessels], radius,
                      (MARGIN + 80, MARGIN + 360), (MARGIN + 20, w - MARGIN - 20))
        if spot is not None:
            vessels.append(Ellipse(*spot, radius, radius * rng.uniform(0.55, 1.0),
                                   rng.uniform(0, math.pi)))
    for v in vessels:
        lumen, echoes = _vessel(rows, cols, v, rng.uniform(2.0, 2.8))
        out = out * (1.0 - lumen) + echoes
    keep_out += [(v, 8.0) for v in vessels]
    # Decoys: dark blobs without rims and nerve-like honeycomb clusters away from the nerve.
    spots = [_place(rng, keep_out, 8.0, (MARGIN + 40, MARGIN + 380),
                    (MARGIN + 10, w - MARGIN - 10)) for _ in range(rng.integers(8, 18))]
    centers = np.array([s for s in spots if s is not None], dtype=np.float32).reshape(-1, 2)
    out += _blobs(rng, rows, cols, centers, rng.uniform(3.5, 9.0, len(centers)),
                  -rng.uniform(0.8, 1.3), 0.0)
    for _ in range(rng.integers(1, 4)):
        semi = rng.uniform(25, 50)
        spot = _place(rng, keep_out, semi, (MARGIN + 60, MARGIN + 340),
                      (MARGIN + 40, w - MARGIN - 40))
        if spot is None:
            continue
        decoy = Ellipse(*spot, semi, semi * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi))
        _blend_patch(out, *_honeycomb(rng, decoy, _fascicle_count(rng, decoy),
                                      -rng.uniform(1.4, 2.0), rng.uniform(0.2, 0.6),
                                      rng.uniform(0.6, 1.1), rng.uniform(0.0, 0.4), 0.37))
        keep_out.append((decoy, 4.0))
    return out.astype(np.float32)


def _nerve_pattern(seed: int, domain: int, subject: int,
                   nerve: Ellipse) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The nerve's honeycomb at contrast 1: (patch, cover, canvas corner), see `_honeycomb`."""
    rng = _rng(seed, domain, subject, CANVAS, 1)
    return _honeycomb(rng, nerve, _fascicle_count(rng, nerve), core=-2.0, rim=0.6, bundle=1.25,
                      sheath=0.7, grain=0.42)


def _probe(rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Per-subject display: ([H, W] depth gain + side fade in nepers, grey offset, grey/neper)."""
    rows, cols = _grid((HEIGHT, WIDTH))
    depth = rows / HEIGHT
    gain = -rng.uniform(0.5, 1.1) * depth + 0.25 * np.exp(-rows / 25.0)
    gain -= rng.uniform(0.3, 0.8) * np.clip((depth - 0.8) / 0.2, 0.0, 1.0)  # fading far field
    edge = np.minimum(cols, WIDTH - 1 - cols)
    side = -1.5 * np.clip(1.0 - edge / rng.uniform(12.0, 30.0), 0.0, 1.0) ** 2
    return (gain + side).astype(np.float32), rng.uniform(90.0, 106.0), rng.uniform(37.0, 43.0)


def _marker() -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices of the small bright triangle at the top centre (pointing down)."""
    rr, cc = np.mgrid[3:14, WIDTH // 2 - 7 : WIDTH // 2 + 8]
    keep = np.abs(cc - WIDTH // 2) <= (13 - rr) * 0.65
    return rr[keep], cc[keep]


def _speckle_kernels() -> tuple[np.ndarray, np.ndarray, float]:
    """Row and column Gaussian kernels for speckle and the filtered noise variance."""
    kernels = []
    for sigma in _SPECKLE_SIGMA:
        x = np.arange(-math.ceil(2.5 * sigma), math.ceil(2.5 * sigma) + 1, dtype=np.float32)
        k = np.exp(-0.5 * (x / sigma) ** 2)
        kernels.append(k / k.sum())
    variance = float((kernels[0] ** 2).sum() * (kernels[1] ** 2).sum())
    return kernels[0], kernels[1], variance


def _log_speckle(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """[H, W] float32 zero-mean log of spatially correlated Rayleigh speckle amplitude.

    `tissue` [2, H, W] is the subject's scatterer field under this frame (scaled by
    SPECKLE_PERSISTENCE): speckle moves with the tissue and only partly renews between frames,
    which is what makes real near-duplicate frames recognisable. The magnitude of a blurred
    complex Gaussian field is Rayleigh distributed; its log has mean
    (log(2 var) - Euler gamma) / 2, which is subtracted, and is scaled by _SPECKLE_KEPT.
    """
    k_row, k_col, variance = _speckle_kernels()
    z = rng.standard_normal((2, HEIGHT, WIDTH), dtype=np.float32)
    z *= np.float32(math.sqrt(1.0 - SPECKLE_PERSISTENCE**2))
    z += tissue
    z = ndimage.correlate1d(z, k_col, axis=2, mode="wrap")
    z = ndimage.correlate1d(z, k_row, axis=1, mode="wrap")
    power = z[0] * z[0] + z[1] * z[1]
    power += np.float32(0.15 * 2 * variance)  # softens the deepest speckle nulls
    np.log(power, out=power)
    power -= math.log(2 * variance) - _EULER_GAMMA
    power *= 0.5 * _SPECKLE_KEPT
    return power


# ----------------------------------------------------------------------------------------------
# Rendering and writing.


@dataclasses.dataclass(frozen=True, eq=False)
class Anatomy:
    """A subject's rendered anatomy, all float32.

    `canvas` [H + 2*MARGIN, W + 2*MARGIN] log echogenicity; `scatterers` [2, same] speckle
    field; `pattern` the nerve and `cover` the share of tissue it replaces (both already scaled
    by the contrast) at canvas `corner`; `probe` [H, W] depth gain and side fade; display
    grey = `offset` + `scale` * log amplitude.
    """

    spec: SubjectSpec
    canvas: np.ndarray
    scatterers: np.ndarray
    pattern: np.ndarray
    cover: np.ndarray
    corner: tuple[int, int]
    probe: np.ndarray
    offset: float
    scale: float


def subject_anatomy(spec: SubjectSpec, nerve_contrast: float) -> Anatomy:
    """Renders a subject's canvas, nerve pattern (scaled by `nerve_contrast`) and display."""
    canvas = _canvas(spec.seed, spec.domain, spec.subject, spec.nerve)
    pattern, cover, corner = _nerve_pattern(spec.seed, spec.domain, spec.subject, spec.nerve)
    probe, offset, scale = _probe(_rng(spec.seed, spec.domain, spec.subject, CANVAS, 2))
    scatterers = _rng(spec.seed, spec.domain, spec.subject, CANVAS, 3).standard_normal(
        (2, *CANVAS_SHAPE), dtype=np.float32)
    scatterers *= np.float32(SPECKLE_PERSISTENCE)
    return Anatomy(spec, canvas, scatterers, pattern * np.float32(nerve_contrast),
                   cover * np.float32(min(nerve_contrast, 1.0)), corner, probe, offset, scale)


def render_frame(anatomy: Anatomy, fs: FrameSpec) -> np.ndarray:
    """[420, 580] uint8 ultrasound-like image of one frame."""
    spec = anatomy.spec
    rng = _rng(spec.seed, spec.domain, spec.subject, FRAME, fs.frame)
    (pr, pc), (nr, nc) = _frame_geometry(spec, fs)
    top, left = MARGIN + pr, MARGIN + pc
    log_img = anatomy.canvas[top : top + HEIGHT, left : left + WIDTH].copy()
    if fs.nerve_visible:
        corner = (anatomy.corner[0] - top + nr, anatomy.corner[1] - left + nc)
        _blend_patch(log_img, anatomy.pattern, anatomy.cover, corner)
    log_img += anatomy.probe
    log_img += _log_speckle(rng, anatomy.scatterers[:, top : top + HEIGHT, left : left + WIDTH])
    offset = anatomy.offset + anatomy.scale * rng.normal(0.0, 0.03)
    log_img *= anatomy.scale
    log_img += offset
    image = np.clip(log_img, 0, 255).astype(np.uint8)
    image[_marker()] = 235
    return image


def _write_subject(out_dir: str, seed: int, domain: int, subject: int, frames_per_subject: int,
                   contradictory_rate: float, nerve_contrast: float,
                   test_ids: dict[int, int] | None = None) -> dict:
    """Renders and writes one subject's frames; returns its label records.

    Train subjects write all frames as `train/<subject>_<frame>[_mask].tif`; test subjects
    write only the frames in `test_ids` (frame -> id) as `test/<id>.tif`.
    """
    spec = subject_spec(seed, domain, subject, frames_per_subject, contradictory_rate)
    anatomy = subject_anatomy(spec, nerve_contrast)
    records, pairs = [], []
    for fs in spec.frames:
        if test_ids is not None and fs.frame not in test_ids:
            continue
        image, mask = render_frame(anatomy, fs), frame_mask(spec, fs)
        if test_ids is None:
            name = f"{subject}_{fs.frame}"
            write_tiff(os.path.join(out_dir, "train", name + ".tif"), image)
            write_tiff(os.path.join(out_dir, "train", name + "_mask.tif"),
                       mask.astype(np.uint8) * np.uint8(255))
            if fs.twin_of is not None:
                pairs.append([f"{subject}_{fs.twin_of}", name])
        else:
            write_tiff(os.path.join(out_dir, "test", f"{test_ids[fs.frame]}.tif"), image)
        records.append({"frame": fs.frame, "id": None if test_ids is None else test_ids[fs.frame],
                        "pixels": rle.encode(mask), "area": int(mask.sum())})
    return {"subject": subject, "share": spec.nerve_share, "records": records, "pairs": pairs}


def _test_assignment(seed: int, num_test: int, frames_per_subject: int) -> list[dict[int, int]]:
    """Per test subject (1-based list index + 1), a map frame -> test id, ids 1..num_test.

    Test ids are a random sample of the test subjects' frames in shuffled order, so ids carry
    no subject information.
    """
    num_subjects = -(-num_test // frames_per_subject)
    order = _rng(seed, TEST, 0, ORDER).permutation(num_subjects * frames_per_subject)[:num_test]
    assignment: list[dict[int, int]] = [{} for _ in range(num_subjects)]
    for test_id, slot in enumerate(order, start=1):
        assignment[slot // frames_per_subject][slot % frames_per_subject + 1] = test_id
    return assignment


def _check_out_dir(out_dir: str) -> None:
    for sub in ("train", "test"):
        path = os.path.join(out_dir, sub)
        if os.path.exists(path):
            raise ValueError(f"{out_dir}: already holds {sub}/; choose a new or empty folder")


def generate(out_dir: str | os.PathLike, *, num_subjects: int = 8, frames_per_subject: int = 40,
             num_test: int = 40, seed: int = 0, nerve_contrast: float = DEFAULT_NERVE_CONTRAST,
             contradictory_rate: float = 0.0, workers: int = 1) -> SynthSummary:
    """Writes a synthetic dataset in Kaggle layout into `out_dir`; same bytes for same arguments.

    `nerve_contrast` scales the nerve's pattern and, up to 1, the share of tissue it replaces
    (0: invisible, 1: subtle like the real data).
    `contradictory_rate` is the share of nerve frames that get an unlabelled near-identical twin
    (replacing an empty frame of the same subject). `workers` > 1 renders subjects in parallel
    processes without changing the output. Raises ValueError if `out_dir` has train/ or test/.
    """
    out_dir = os.fspath(out_dir)
    if num_subjects < 1 or frames_per_subject < 1 or num_test < 0 or workers < 1:
        raise ValueError("num_subjects, frames_per_subject and workers must be >= 1, "
                         "num_test >= 0")
    if not 0.0 <= contradictory_rate <= 1.0 or nerve_contrast < 0:
        raise ValueError("contradictory_rate must be in [0, 1] and nerve_contrast >= 0")
    _check_out_dir(out_dir)
    start = time.perf_counter()
    os.makedirs(os.path.join(out_dir, "train"))
    os.makedirs(os.path.join(out_dir, "test"))
    common = (frames_per_subject, contradictory_rate, nerve_contrast)
    jobs = [(out_dir, seed, TRAIN, s, *common, None) for s in range(1, num_subjects + 1)]
    jobs += [(out_dir, seed, TEST, s, frames_per_subject, 0.0, nerve_contrast, ids)
             for s, ids in enumerate(_test_assignment(seed, num_test, frames_per_subject), 1)]
    if workers == 1:
        results = [_write_subject(*job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")  # the caller may hold JAX threads
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_write_subject, *zip(*jobs, strict=True)))
    train, test = results[:num_subjects], results[num_subjects:]
    _write_csvs(out_dir, train, test)
    pairs = [p for r in train for p in r["pairs"]]
    _write_truth(out_dir, seed, num_subjects, frames_per_subject, num_test, nerve_contrast,
                 contradictory_rate, train, test, pairs)
    seconds = time.perf_counter() - start
    return _summary(out_dir, train, num_test, len(pairs), seconds)


def _write_csvs(out_dir: str, train: list[dict], test: list[dict]) -> None:
    with atomic_open(os.path.join(out_dir, "train_masks.csv"), newline="") as f:
        f.write("subject,img,pixels\n")
        for r in train:
            for rec in r["records"]:
                f.write(f"{r['subject']},{rec['frame']},{rec['pixels']}\n")
    test_records = sorted((rec["id"], rec["pixels"]) for r in test for rec in r["records"])
    with atomic_open(os.path.join(out_dir, "sample_submission.csv"), newline="") as f:
        f.write("img,pixels\n")
        f.writelines(f"{i},1 1\n" for i, _ in test_records)
    with atomic_open(os.path.join(out_dir, TEST_MASKS_FILE), newline="") as f:
        f.write("img,pixels\n")
        f.writelines(f"{i},{pixels}\n" for i, pixels in test_records)


def _write_truth(out_dir: str, seed: int, num_subjects: int, frames_per_subject: int,
                 num_test: int, nerve_contrast: float, contradictory_rate: float,
                 train: list[dict], test: list[dict], pairs: list[list[str]]) -> None:
    truth = {
        "generator": "nerve_jax.data.synthetic",
        "seed": seed,
        "params": {"num_subjects": num_subjects, "frames_per_subject": frames_per_subject,
                   "num_test": num_test, "nerve_contrast": nerve_contrast,
                   "contradictory_rate": contradictory_rate},
        "contradictory_pairs": pairs,  # [img_with_mask, img_without_mask], names without .tif
        "subject_nerve_share": {str(r["subject"]): round(r["share"], 4) for r in train},
        "test_subject_of_id": {str(rec["id"]): r["subject"] for r in test
                               for rec in sorted(r["records"], key=lambda x: x["id"])},
    }
    with atomic_open(os.path.join(out_dir, TRUTH_FILE)) as f:
        json.dump(truth, f, indent=1)
        f.write("\n")


def _summary(out_dir: str, train: list[dict], num_test: int, num_pairs: int,
             seconds: float) -> SynthSummary:
    areas = np.array([rec["area"] for r in train for rec in r["records"]])
    shares = np.array([np.mean([rec["area"] > 0 for rec in r["records"]]) for r in train])
    nonzero = areas[areas > 0]
    return SynthSummary(
        out_dir=out_dir, num_subjects=len(train), num_train_images=areas.size,
        num_test_images=num_test, share_empty=float(np.mean(areas == 0)),
        subject_share_min=float(shares.min()), subject_share_median=float(np.median(shares)),
        subject_share_max=float(shares.max()),
        median_area=float(np.median(nonzero)) if nonzero.size else 0.0,
        num_contradictory_pairs=num_pairs, seconds=round(seconds, 3),
        ms_per_image=round(1000 * seconds / max(1, areas.size + num_test), 2))
