"""Tests for nerve_jax.rle: hand-computed strings, round trips, strictness, JAX encoder."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.draw import ellipse

from nerve_jax import rle

H, W = 420, 580
FAST = settings(max_examples=150, deadline=None)


def loop_encode(mask: np.ndarray) -> str:
    """Reference: walk the pixels in column-major order one by one."""
    values, run_start = [], None
    pixels = [bool(v) for v in np.asarray(mask).T.ravel()] + [False]
    for index, on in enumerate(pixels):
        if on and run_start is None:
            run_start = index
        elif not on and run_start is not None:
            values += [run_start + 1, index - run_start]
            run_start = None
    return " ".join(map(str, values))


def ellipse_mask(seed: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """[H, W] uint8 0/255 mask holding one random filled ellipse."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.uint8)
    center = rng.uniform(0.2, 0.8, 2) * shape
    radii = rng.uniform(0.05, 0.3, 2) * min(shape)
    rr, cc = ellipse(*center, *radii, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
    mask[rr, cc] = 255
    return mask


masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: hnp.arrays(np.bool_, shape)
)


@st.composite
def valid_runs(draw, min_runs: int = 0) -> tuple[list[int], tuple[int, int]]:
    """(values [start, length, ...], shape) for a valid RLE: sorted, disjoint, not touching."""
    shapes = st.tuples(st.integers(1, 15), st.integers(1, 15))
    shape = draw(shapes.filter(lambda s: (s[0] * s[1] + 1) // 2 >= min_runs))
    n = shape[0] * shape[1]
    k = draw(st.integers(min_runs, (n + 1) // 2))
    # 2k distinct sorted boundaries in [0, n]: starts and one-past-ends, gaps >= 1 between runs.
    bounds = sorted(draw(st.lists(st.integers(0, n), min_size=2 * k, max_size=2 * k, unique=True)))
    values = []
    for s, e in zip(bounds[0::2], bounds[1::2], strict=True):
        values += [s + 1, e - s]
    return values, shape


def text(values: list[int]) -> str:
    return " ".join(map(str, values))


# --- hand-computed examples ---------------------------------------------------------------


def test_dataset_md_worked_example():
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 0] = mask[2, 0] = mask[0, 1] = True
    assert rle.encode(mask) == "2 3"
    np.testing.assert_array_equal(rle.decode("2 3", (3, 3)), mask)


def test_run_crossing_a_column_boundary():
    mask = np.zeros((4, 3), dtype=np.uint8)
    mask[2:, 0] = 1  # pixels 3, 4 (bottom of column 0)
    mask[:1, 1] = 1  # pixel 5 (top of column 1) -> one run 3..5
    mask[3, 2] = 1  # pixel 12, the last one
    assert rle.encode(mask) == "3 3 12 1"
    np.testing.assert_array_equal(rle.decode("3 3 12 1", (4, 3)), mask.astype(bool))


def test_full_empty_and_last_pixel():
    assert rle.encode(np.ones((H, W), dtype=bool)) == f"1 {H * W}"
    assert rle.encode(np.zeros((H, W), dtype=bool)) == ""
    last = np.zeros((H, W), dtype=bool)
    last[-1, -1] = True
    assert rle.encode(last) == f"{H * W} 1"
    assert rle.decode(f"{H * W} 1")[-1, -1]
    assert rle.decode(f"1 {H * W}").all()
    assert not rle.decode("").any() and not rle.decode("  \t\n").any()


def test_decode_returns_c_contiguous_bool():
    mask = rle.decode("2 3", (3, 3))
    assert mask.dtype == np.bool_ and mask.shape == (3, 3) and mask.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.float32])
def test_0_1_and_0_255_inputs_agree(dtype):
    mask = ellipse_mask(0)
    expected = loop_encode(mask)
    assert rle.encode((mask > 0).astype(dtype)) == expected
    if dtype != np.bool_:
        assert rle.encode(mask.astype(dtype)) == expected  # 0/255


def test_mixed_nonzero_values_count_as_set():
    mask = np.array([[0, 1], [255, 7]], dtype=np.uint8)
    assert rle.encode(mask) == "2 3"


def test_non_contiguous_input():
    mask = ellipse_mask(1)
    assert rle.encode(mask.T) == loop_encode(mask.T)
    assert rle.encode(mask[::2, ::3]) == loop_encode(mask[::2, ::3])


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4)), np.array(1)])
def test_encode_rejects_non_2d(bad):
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(bad)


# --- properties -----------------------------------------------------------------------------


@FAST
@given(masks)
def test_encode_matches_loop_and_round_trips(mask):
    encoded = rle.encode(mask)
    assert encoded == loop_encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded, mask.shape), mask)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 600), st.booleans(), st.integers(0, 2**31))
def test_round_trip_1xn_and_nx1(n, column, seed):
    shape = (n, 1) if column else (1, n)
    mask = np.random.default_rng(seed).random(shape) < 0.5
    assert rle.encode(mask) == loop_encode(mask)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask), shape), mask)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.0, 1.0))
def test_full_size_random_masks(seed, density):
    mask = np.random.default_rng(seed).random((H, W)) < density
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)


@FAST
@given(valid_runs())
def test_encode_of_decode_is_identity(case):
    values, shape = case
    assert rle.encode(rle.decode(text(values), shape)) == text(values)


def _corrupt(kind: str, values: list[int], n: int, i: int) -> list[int]:
    """A valid run list (>= 2 runs) broken in one way; i picks the run to break."""
    v = list(values)
    k = len(v) // 2
    i %= k - 1  # runs i and i + 1 both exist
    s, length = v[2 * i], v[2 * i + 1]
    if kind == "odd":
        return v[:-1]
    if kind == "zero length":
        v[2 * i + 1] = 0
    elif kind == "start below 1":
        v[0] = 0
    elif kind == "past the end":
        v[-1] = n - v[-2] + 2
    elif kind == "unsorted":
        v[2 * i : 2 * i + 4] = v[2 * i + 2 : 2 * i + 4] + v[2 * i : 2 * i + 2]
    elif kind == "overlapping":
        v[2 * i + 2] = s + length - 1
    elif kind == "touching":
        v[2 * i + 2] = s + length
    return v


MESSAGES = {
    "odd": "odd number",
    "zero length": "length 0",
    "start below 1": "numbered from 1",
    "past the end": "past the last pixel",
    "unsorted": "sorted",
    "overlapping": "overlaps|is not after",  # a 1-pixel run can only be overlapped at its start
    "touching": "touches",
}


@FAST
@given(valid_runs(min_runs=2), st.sampled_from(sorted(MESSAGES)), st.integers(0, 1000))
def test_every_malformed_kind_is_rejected(case, kind, i):
    values, shape = case
    broken = _corrupt(kind, values, shape[0] * shape[1], i)
    with pytest.raises(ValueError, match=MESSAGES[kind]):
        rle.decode(text(broken), shape)


@pytest.mark.parametrize("token", ["1.5", "a", "-3", "+3", "1e3", "0x10", "٣", "²"])
def test_non_integer_tokens_rejected(token):
    with pytest.raises(ValueError, match=re.escape(f"value 3 ({token!r}) is not a positive whole")):
        rle.decode(f"1 1 {token} 2", (10, 10))


@pytest.mark.parametrize(
    ("rle_text", "match"),
    [
        ("1", "odd number of values \\(1\\)"),
        ("1 0", "run 1 \\(start 1\\) has length 0"),
        ("0 5", "run 1 has start 0"),
        ("99999999999999999999999 1", "too large"),
        ("9223372036854775807 9223372036854775807", "past the last pixel 243600"),
        (f"{H * W} 2", f"ends at pixel {H * W + 1}, past the last pixel {H * W} of a 420x580"),
        ("10 2 5 1", "run 2 \\(start 5\\) is not after run 1 \\(start 10\\)"),
        ("10 2 10 1", "run 2 \\(start 10\\) is not after run 1"),
        ("10 5 12 1", "run 2 \\(start 12\\) overlaps run 1 \\(pixels 10-14\\)"),
        ("10 5 15 1", "run 2 \\(start 15\\) touches run 1 \\(pixels 10-14\\)"),
    ],
)
def test_error_messages_say_what_is_wrong(rle_text, match):
    with pytest.raises(ValueError, match=match):
        rle.decode(rle_text)


# --- JAX encoder -------------------------------------------------------------------------------
# Each distinct (shape, dtype, max_runs, block) compiles once; tests batch masks to stay fast.


@functools.cache
def jitted(max_runs: int, block: int = 16):
    return jax.jit(functools.partial(rle.encode_jax, max_runs=max_runs, block=block))


def expected_runs(mask: np.ndarray, max_runs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """NumPy encoder's runs as encode_jax lays them out: first max_runs, zero padded."""
    starts, lengths = rle.mask_runs(mask)
    kept = min(len(starts), max_runs)
    padded = np.zeros((2, max_runs), np.int32)
    padded[0, :kept], padded[1, :kept] = starts[:kept], lengths[:kept]
    return padded[0], padded[1], len(starts)


def assert_runs_match(runs: rle.RunsJax, mask: np.ndarray, max_runs: int) -> None:
    starts, lengths, count = expected_runs(mask, max_runs)
    assert int(runs.count) == count and bool(runs.overflow) == (count > max_runs)
    np.testing.assert_array_equal(np.asarray(runs.starts), starts)
    np.testing.assert_array_equal(np.asarray(runs.lengths), lengths)
    assert runs.starts.dtype == runs.lengths.dtype == runs.count.dtype == jnp.int32


def unbatch(runs: rle.RunsJax, index: int) -> rle.RunsJax:
    return rle.RunsJax(*(field[index] for field in runs))


def frame_filling_ellipse() -> np.ndarray:
    """Touches all four borders: one run per column, some wrapping into the next column."""
    mask = np.zeros((H, W), np.uint8)
    rr, cc = ellipse(H / 2, W / 2, H / 2, W / 2, shape=(H, W))
    mask[rr, cc] = 1
    return mask


@pytest.mark.slow
def test_jax_matches_numpy_on_full_size_masks():
    cases = [ellipse_mask(seed) for seed in range(4)] + [frame_filling_ellipse()]
    cases += [np.zeros((H, W), np.uint8), np.full((H, W), 255, np.uint8)]
    batch = np.stack(cases)
    runs = rle.encode_batch_runs(batch, rle.DEFAULT_MAX_RUNS)  # jit + vmap
    for b, mask in enumerate(cases):
        assert_runs_match(unbatch(runs, b), mask, rle.DEFAULT_MAX_RUNS)
        assert rle.runs_to_string(unbatch(runs, b)) == rle.encode(mask)
    assert rle.encode_batch_jax(batch) == [rle.encode(m) for m in cases]
    assert int(runs.count[4]) <= W  # the default max_runs holds any convex mask
    single = jitted(rle.DEFAULT_MAX_RUNS)(cases[0] > 0)  # jit without vmap, bool input
    assert_runs_match(single, cases[0], rle.DEFAULT_MAX_RUNS)


@pytest.mark.parametrize("shape", [(7, 5), (1, 9), (9, 1)])
def test_jax_matches_numpy_on_random_masks_under_jit_and_vmap(shape):
    rng = np.random.default_rng(sum(shape))
    batch = rng.random((32, *shape)) < rng.random((32, 1, 1))
    batch[0], batch[1] = False, True
    max_runs = (shape[0] * shape[1] + 1) // 2  # the most runs a mask of this size can have
    runs = rle.encode_batch_runs(batch, max_runs)
    assert runs.starts.shape == (32, max_runs) and runs.count.shape == (32,)
    for b, mask in enumerate(batch):
        assert_runs_match(unbatch(runs, b), mask, max_runs)
        assert rle.runs_to_string(unbatch(runs, b)) == rle.encode(mask)


@pytest.mark.parametrize(("block", "max_runs"), [(1, 4), (3, 70)])
def test_jax_edge_search_blocks_and_truncation(block, max_runs):
    """Any block size (20 rows: not a multiple of 3) gives the first max_runs runs."""
    rng = np.random.default_rng(block)
    batch = rng.random((24, 20, 7)) < rng.random((24, 1, 1))
    encode = jax.jit(jax.vmap(functools.partial(rle.encode_jax, max_runs=max_runs, block=block)))
    runs = encode(batch)
    for b, mask in enumerate(batch):
        assert_runs_match(unbatch(runs, b), mask, max_runs)


def test_jax_overflow_is_reported_never_truncated():
    mask = np.zeros((4, 4), bool)
    mask[::2] = True  # 8 runs of one pixel
    batch = np.stack([np.zeros((4, 4), bool), mask, mask[::-1]])
    runs = rle.encode_batch_runs(batch, 3)
    one = unbatch(runs, 1)
    assert int(one.count) == 8 and bool(one.overflow)
    np.testing.assert_array_equal(np.asarray(one.starts), [1, 3, 5])  # the first three
    with pytest.raises(ValueError, match="8 runs, more than max_runs=3"):
        rle.runs_to_string(one)
    with pytest.raises(ValueError, match="2 mask\\(s\\) .* index 1 \\(8 runs\\), 2 \\(8 runs\\)"):
        rle.encode_batch_jax(batch, max_runs=3)
    assert rle.runs_to_string(unbatch(runs, 0)) == ""


def test_encode_batch_jax_rejects_non_3d():
    with pytest.raises(ValueError, match="B, H, W"):
        rle.encode_batch_jax(np.zeros((4, 4)))


@pytest.mark.slow
def test_jax_runs_that_exactly_fill_max_runs_are_not_an_overflow():
    mask = np.zeros((6, 4), bool)
    mask[::2, :] = True  # 3 runs per column, 12 in all: pixels 1, 3, 5, 7, ... (column-major).
    runs = rle.encode_jax(jnp.asarray(mask), max_runs=12)
    assert not bool(runs.overflow)
    assert rle.runs_to_string(runs) == " ".join(f"{start} 1" for start in range(1, 25, 2))
    with pytest.raises(ValueError, match="12 runs, more than max_runs=11"):
        rle.runs_to_string(rle.encode_jax(jnp.asarray(mask), max_runs=11))


def test_jax_refuses_a_mask_that_is_not_2d():
    with pytest.raises(ValueError, match=r"expected a 2-D mask, got shape \(2, 3, 4\)"):
        rle.encode_jax(jnp.zeros((2, 3, 4)))
