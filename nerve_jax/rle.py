"""Kaggle run-length encoding: 1-indexed, column-major, space-separated `start length` pairs.

Pixel (row, col) of an [H, W] mask has index `col * H + row + 1`. Runs are sorted, never
overlap and never touch (touching runs are one run), and an empty mask encodes as ''.

`encode` (NumPy) reads the full mask once to see whether it is empty and once more for the
columns that hold set pixels; everything else works on those columns and the bounding box, and
writes O(runs) bytes of text (docs/performance.md, "Run-length encoding", times it).

`encode_jax` computes the same runs inside `jax.jit`/`jax.vmap` with a static `max_runs`, so
masks can be encoded where a model produces them and only ~2*max_runs int32 per mask copied
back; `runs_to_string` turns one mask's runs into the Kaggle string on the host.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# A mask whose every column meets its pixels in one vertical segment (any convex shape, e.g. a
# filled ellipse) has at most one run per column, so at most W = 580 runs at full resolution;
# runs that wrap from the bottom of one column into the top of the next only merge.
DEFAULT_MAX_RUNS = 580


def _binary_view(mask: np.ndarray) -> np.ndarray:
    """[H, W] any dtype -> [H, W] bool/uint8 array, nonzero exactly where the mask is set.

    bool and uint8 (0/1, 0/255) come back as-is, without a copy.
    """
    if mask.dtype == np.bool_ or mask.dtype == np.uint8:
        return mask
    return mask != 0


def _column_major_edges(crop: np.ndarray, top: int, left: int, height: int) -> np.ndarray:
    """[h, w] bool crop at (top, left) of an [height, W] mask -> int64 edges, 0-based, sorted.

    Each column of the crop is padded with False above and below, so edges come in
    (start, end) pairs per column: the global column-major index of a run's first pixel
    and of one past its last pixel.
    """
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=np.bool_)
    padded[:, 1:-1] = crop.T
    col, row = np.divmod(np.flatnonzero(padded[:, 1:] != padded[:, :-1]), h + 1)
    return (col + left) * height + row + top


def _merge_touching(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joins runs where one ends exactly where the next starts (wrap across a column)."""
    touching = ends[:-1] == starts[1:]
    if not touching.any():
        return starts, ends
    keep = ~touching
    return starts[np.concatenate([[True], keep])], ends[np.concatenate([keep, [True]])]


def mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] mask -> (starts, lengths), int64 [R] each; starts are 1-indexed column-major.

    Reads the whole mask twice (a max, then a max per column); all later work is confined to
    the columns holding set pixels, and the edge search to their bounding box.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    height = mask.shape[0]
    binary = _binary_view(mask)
    if binary.size == 0 or not binary.max():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    cols = np.flatnonzero(binary.max(axis=0))
    c0, c1 = cols[0], cols[-1] + 1
    strip = binary[:, c0:c1] != 0  # [H, w] bool, contiguous
    # First/last set pixel of the strip give the row range; cheaper than a per-row max.
    set_pixels = np.flatnonzero(strip)
    r0, r1 = set_pixels[0] // (c1 - c0), set_pixels[-1] // (c1 - c0) + 1
    edges = _column_major_edges(strip[r0:r1], r0, c0, height)
    starts, ends = _merge_touching(edges[0::2], edges[1::2])
    return starts + 1, ends - starts


def runs_to_text(starts: np.ndarray, lengths: np.ndarray) -> str:
    """int [R] starts and lengths -> 'start length start length ...' ('' when R == 0)."""
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    # printf-style formatting of one tuple is ~1.6x faster than ' '.join(map(str, ...)).
    return ("%d " * len(pairs) % tuple(pairs.tolist()))[:-1]


def encode(mask: np.ndarray) -> str:
    """[H, W] mask (bool, 0/1 or 0/255; any nonzero counts as set) -> Kaggle RLE ('' if empty).

    Raises ValueError when the mask is not 2-D.
    """
    return runs_to_text(*mask_runs(mask))


def _parse_values(rle: str) -> np.ndarray:
    """RLE text -> int64 [2R] values; ValueError naming the first token that is not a number."""
    tokens = rle.split()
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    joined = "".join(tokens)
    if not (joined.isascii() and joined.isdigit()):
        for position, token in enumerate(tokens, start=1):
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"value {position} ({token!r}) is not a positive whole number")
    try:
        return np.array(tokens, dtype=np.int64)
    except OverflowError:
        raise ValueError("a value is too large to be a pixel index") from None


def _first(bad: np.ndarray) -> int | None:
    """bool [N] -> index of the first True, or None."""
    return int(np.argmax(bad)) if bad.any() else None


def _check_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> None:
    """Raises ValueError describing an invalid run (runs numbered from 1 in messages)."""
    height, width = shape
    num_pixels = height * width
    if (i := _first(lengths < 1)) is not None:
        raise ValueError(f"run {i + 1} (start {starts[i]}) has length {lengths[i]}; must be >= 1")
    if (i := _first(starts < 1)) is not None:
        raise ValueError(f"run {i + 1} has start {starts[i]}; pixels are numbered from 1")
    # Written as a comparison with a small number so huge values cannot overflow int64.
    if (i := _first(starts > num_pixels + 1 - lengths)) is not None:
        raise ValueError(
            f"run {i + 1} (start {starts[i]}, length {lengths[i]}) ends at pixel "
            f"{int(starts[i]) + int(lengths[i]) - 1}, past the last pixel {num_pixels} "
            f"of a {height}x{width} mask"
        )
    last = starts + lengths - 1  # last pixel of each run, inclusive
    if (i := _first(starts[1:] <= starts[:-1])) is not None:
        raise ValueError(
            f"run {i + 2} (start {starts[i + 1]}) is not after run {i + 1} (start {starts[i]}); "
            "runs must be sorted by start"
        )
    if (i := _first(starts[1:] <= last[:-1])) is not None:
        raise ValueError(
            f"run {i + 2} (start {starts[i + 1]}) overlaps run {i + 1} "
            f"(pixels {starts[i]}-{last[i]})"
        )
    if (i := _first(starts[1:] == last[:-1] + 1)) is not None:
        raise ValueError(
            f"run {i + 2} (start {starts[i + 1]}) touches run {i + 1} "
            f"(pixels {starts[i]}-{last[i]}); touching runs must be written as one run"
        )


def parse_runs(rle: str, shape: tuple[int, int] = (420, 580)) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle RLE -> validated (starts, lengths), int64 [R] each, starts 1-indexed.

    Raises ValueError saying what is wrong: an odd number of values, a value that is not a
    positive whole number, a length below 1, a start below 1, a run past H*W, or runs that are
    unsorted, overlapping or touching. Empty or whitespace-only text has no runs.
    """
    values = _parse_values(rle)
    if len(values) % 2:
        raise ValueError(f"odd number of values ({len(values)}); expected 'start length' pairs")
    starts, lengths = values[0::2], values[1::2]
    if len(starts):
        _check_runs(starts, lengths, shape)
    return starts, lengths


def decode(rle: str, shape: tuple[int, int] = (420, 580)) -> np.ndarray:
    """Kaggle RLE string -> [H, W] bool mask (C-contiguous). Strict: see `parse_runs`."""
    starts, lengths = parse_runs(rle, shape)
    # 0-based column-major index of every set pixel: each run's start, repeated, plus its
    # offset within the run. Scattering by (row, col) builds the C-order mask directly.
    before = np.cumsum(lengths) - lengths
    pixels = np.repeat(starts - 1 - before, lengths) + np.arange(lengths.sum())
    col, row = np.divmod(pixels, shape[0])
    mask = np.zeros(shape, dtype=np.bool_)
    mask[row, col] = True
    return mask


class RunsJax(NamedTuple):
    """Runs of one mask (or a batch, with a leading [B] axis, under vmap).

    starts: int32 [max_runs], 1-indexed column-major; lengths: int32 [max_runs]; slots past
    min(count, max_runs) are 0. count: int32 [], the true number of runs (may exceed
    max_runs). overflow: bool [], count > max_runs (then only the first max_runs are kept).
    """

    starts: jax.Array
    lengths: jax.Array
    count: jax.Array
    overflow: jax.Array


def _edges_grid(mask: jax.Array) -> jax.Array:
    """[H, W] mask -> [H, W] bool: pixel differs from the previous one in column-major order.

    The previous pixel is the one above, or the bottom of the previous column for row 0, so
    no transpose is needed. The run end after the very last pixel is not on the grid.
    """
    on = mask != 0
    wrapped = jnp.concatenate([jnp.zeros((1,), jnp.bool_), on[-1, :-1]])
    previous = jnp.concatenate([wrapped[None], on[:-1]], axis=0)
    return on != previous


def _first_edges(grid: jax.Array, size: int, block: int) -> tuple[jax.Array, jax.Array]:
    """[H, W] bool edge grid -> (int32 [size] column-major indices of the first `size` edges,
    int32 [] number of edges on the grid).

    Slots past the number of edges hold H*W (where the final run ends, if it is open).
    Two-level compaction: `jnp.nonzero` over all H*W cells costs a cumsum and a scatter over
    every cell, so first pick the first `size` column segments of `block` rows holding an
    edge, then search only those (the first `size` edges lie in at most `size` segments).
    """
    height, width = grid.shape
    seg_rows = -(-height // block)
    grid = jnp.pad(grid, ((0, seg_rows * block - height), (0, 0)))
    # Segment (col, k) covers rows k*block .. k*block+block-1 of column col; column-major order.
    per_seg = grid.reshape(seg_rows, block, width).sum(axis=1, dtype=jnp.int32).T.reshape(-1)
    num_segs = min(size, per_seg.size)
    (seg,) = jnp.nonzero(per_seg, size=num_segs, fill_value=0)
    col, first_row = seg // seg_rows, (seg % seg_rows) * block
    rows = first_row[:, None] + jnp.arange(block)[None]
    real = jnp.arange(num_segs) < jnp.count_nonzero(per_seg)
    cells = grid[rows, col[:, None]] & real[:, None]  # [num_segs, block]
    (pos,) = jnp.nonzero(cells.reshape(-1), size=size, fill_value=0)
    seg_of = pos // block
    edges = col[seg_of] * height + first_row[seg_of] + pos % block
    total = jnp.sum(per_seg, dtype=jnp.int32)
    found = jnp.arange(size) < total
    return jnp.where(found, edges, height * width).astype(jnp.int32), total


def encode_jax(mask: jax.Array, max_runs: int = DEFAULT_MAX_RUNS, block: int = 16) -> RunsJax:
    """[H, W] mask (any dtype; nonzero is set) -> RunsJax. Traceable: use under jit and vmap.

    `max_runs` (and `block`, a tuning knob for the edge search) must be static. The runs
    equal `mask_runs`' exactly when count <= max_runs; otherwise the first max_runs runs.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    # Edges alternate start, end (end = one past the last pixel), all 0-based.
    edges, on_grid = _first_edges(_edges_grid(mask), 2 * max_runs, block)
    count = ((on_grid + (mask[-1, -1] != 0)) // 2).astype(jnp.int32)
    used = jnp.arange(max_runs, dtype=jnp.int32) < count
    starts = jnp.where(used, edges[0::2] + 1, 0)
    lengths = jnp.where(used, edges[1::2] - edges[0::2], 0)
    return RunsJax(starts, lengths, count, count > max_runs)


def runs_to_string(runs: RunsJax) -> str:
    """One mask's RunsJax (host or device arrays) -> Kaggle RLE string.

    Raises ValueError when the runs overflowed max_runs; never returns a truncated string.
    """
    starts, lengths = np.asarray(runs.starts), np.asarray(runs.lengths)
    count = int(runs.count)
    if starts.ndim != 1:
        raise ValueError(f"expected the runs of one mask, got starts of shape {starts.shape}")
    if bool(runs.overflow) or count > len(starts):
        raise ValueError(f"mask has {count} runs, more than max_runs={len(starts)}")
    return runs_to_text(starts[:count], lengths[:count])


@partial(jax.jit, static_argnums=1)
def encode_batch_runs(masks: jax.Array, max_runs: int = DEFAULT_MAX_RUNS) -> RunsJax:
    """[B, H, W] masks -> RunsJax with a leading [B] axis; jitted vmap of `encode_jax`."""
    return jax.vmap(encode_jax, in_axes=(0, None))(masks, max_runs)


def batch_runs_to_strings(runs: RunsJax) -> list[str]:
    """Batched RunsJax -> B strings; ValueError naming the overflowed indices (first 10)."""
    runs = RunsJax(*jax.device_get(tuple(runs)))
    overflowed = np.flatnonzero(runs.overflow)
    if overflowed.size:
        max_runs = runs.starts.shape[1]
        details = ", ".join(f"{i} ({runs.count[i]} runs)" for i in overflowed[:10].tolist())
        raise ValueError(
            f"{overflowed.size} mask(s) have more than max_runs={max_runs} runs, at batch "
            f"index {details}"
        )
    return [
        runs_to_text(s[:c], n[:c])
        for s, n, c in zip(runs.starts, runs.lengths, runs.count.tolist(), strict=True)
    ]


def encode_batch_jax(masks: jax.Array | np.ndarray, max_runs: int = DEFAULT_MAX_RUNS) -> list[str]:
    """[B, H, W] masks -> B Kaggle RLE strings via jit+vmap on the default device.

    Raises ValueError (naming the batch indices) when a mask has more than max_runs runs.
    """
    if np.ndim(masks) != 3:
        raise ValueError(f"expected [B, H, W] masks, got shape {np.shape(masks)}")
    return batch_runs_to_strings(encode_batch_runs(masks, max_runs))
