"""Near-duplicate frames with contradictory labels (one has a nerve mask, its twin none).

Within a subject many frames are near-identical. A frame's signature is a coarse thumbnail
(means of about 30x30 px cells) with its mean removed, in units of the frame's speckle level
(the mean standard deviation inside a cell); the distance of two frames is the root-mean-square
difference of their signatures. Brightness and gain changes cancel out, and because ultrasound
speckle has a fixed relative spread, the unit follows the display gain rather than the anatomy:
twins whose speckle partly renewed sit at a similar distance in every subject (measured on the
synthetic generator's twins, see DEFAULT_THRESHOLD). Pairs of the same subject within a
threshold where exactly one frame has a nerve are label noise.

Pure NumPy (configs import it for DEFAULT_THRESHOLD); data/pipeline.py reads the frames of a
TFDS split for it.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

CELL = (30, 29)  # Signature cell (rows, cols), px: a 420x580 frame -> 14x20 cells.
# Twin-to-source distances on synthetic sets (6 sets, 10-20 subjects x 40-120 frames, twin rates
# 0.1-0.3) reach 0.046; an empty frame without a visible nerve is never closer than 0.066 to a
# nerve frame. Finer cells or per-frame variance normalisation separated them less. Not checked
# on the real data, whose twins also differ by probe motion: look at the pairs before trusting it.
DEFAULT_THRESHOLD = 0.055


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two frames of `subject` (Kaggle stems like "3_17") at signature `distance`."""

    subject: int
    with_nerve: str
    without_nerve: str
    distance: float


def frame_signature(image: np.ndarray) -> np.ndarray:
    """[420, 580] uint8 frame -> [14 * 20] float32 cell means minus their mean, divided by the
    mean standard deviation of the pixels inside a cell (the speckle level)."""
    (rows, cols), (cell_rows, cell_cols) = image.shape, CELL
    if rows % cell_rows or cols % cell_cols:
        raise ValueError(f"frame shape {image.shape} is not a multiple of the {CELL} px cell")
    cells = image.astype(np.float32).reshape(rows // cell_rows, cell_rows, cols // cell_cols,
                                             cell_cols)
    means = cells.mean(axis=(1, 3))
    variances = (cells * cells).mean(axis=(1, 3)) - means * means
    speckle = float(np.sqrt(np.maximum(variances, 0.0)).mean())
    means -= means.mean()
    return means.ravel() / max(speckle, 1e-6)


def pairwise_distances(signatures: np.ndarray) -> np.ndarray:
    """[n, d] signatures -> [n, n] float32 root-mean-square differences."""
    s = signatures.astype(np.float64)
    squared = np.sum(s * s, axis=1)
    gram = s @ s.T
    mean_squared = (squared[:, None] + squared[None, :] - 2.0 * gram) / s.shape[1]
    return np.sqrt(np.maximum(mean_squared, 0.0)).astype(np.float32)


def find_contradictory_pairs(names: Sequence[str], subjects: Sequence[int],
                             has_nerve: Sequence[bool], signatures: np.ndarray,
                             threshold: float = DEFAULT_THRESHOLD) -> list[Pair]:
    """Pairs of frames of the same subject at distance <= `threshold` where exactly one has a nerve.

    `names`, `subjects`, `has_nerve` have one entry per frame, `signatures` is [n, d] float32
    (rows from `frame_signature`). A frame may have several close twins: every such pair is
    reported. Sorted by (subject, distance), ties by name.
    """
    subjects = np.asarray(subjects)
    has_nerve = np.asarray(has_nerve, dtype=bool)
    if not len(names) == len(subjects) == len(has_nerve) == len(signatures):
        raise ValueError("names, subjects, has_nerve and signatures need one entry per frame")
    pairs = []
    for subject in np.unique(subjects):
        frames = np.flatnonzero(subjects == subject)
        nerve, empty = frames[has_nerve[frames]], frames[~has_nerve[frames]]
        if not nerve.size or not empty.size:
            continue
        distances = pairwise_distances(signatures[np.concatenate([nerve, empty])])
        across = distances[: nerve.size, nerve.size :]  # [nerve, empty]
        for i, j in zip(*np.nonzero(across <= threshold), strict=True):
            pairs.append(Pair(int(subject), names[nerve[i]], names[empty[j]],
                              float(across[i, j])))
    return sorted(pairs, key=lambda p: (p.subject, p.distance, p.with_nerve, p.without_nerve))


def closest_nerve_twins(pairs: Sequence[Pair]) -> dict[str, Pair]:
    """{empty frame's name: its closest pair} over `pairs` (as from find_contradictory_pairs)."""
    closest: dict[str, Pair] = {}
    for pair in sorted(pairs, key=lambda p: (p.distance, p.with_nerve)):
        closest.setdefault(pair.without_nerve, pair)
    return closest
