"""Post-processing on the host (NumPy, scikit-image): full-resolution probabilities become masks,
one frame at a time. `apply` is the tunable chain

    pixel threshold -> drop small components -> keep the largest -> fill holes -> fit ellipses
    -> empty a mask smaller than min_mask_area -> empty a frame whose presence is too low

whose `Settings` come from the config or from a workdir's postprocess.json (`nerve-jax tune`).
Components are 8-connected. The steps work on the mask's bounding box, so a frame costs
little more than its nerve.
"""

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from scipy import ndimage
from skimage import draw, measure

from nerve_jax import fileio
from nerve_jax.atomic import atomic_open
from nerve_jax.errors import UserError

POSTPROCESS_FILE = "postprocess.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Host-side post-processing of one frame, in the order of the fields (see `apply`)."""

    threshold: float = 0.5  # A pixel is nerve where its probability is above this.
    min_component_area: int = 0  # Components with fewer pixels are dropped.
    largest_component_only: bool = False  # Every real mask is one component.
    fill_holes: bool = False
    ellipse_fit: bool = False  # Each component becomes the ellipse with its second moments.
    min_mask_area: int = 0  # A mask with fewer pixels in all is emptied.
    presence_threshold: float = 0.5  # A frame with a lower presence probability is emptied.

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Settings":
        """The config's values (older workdir configs are completed by config_util.migrate)."""
        return cls(**{f.name: type(f.default)(config[f.name]) for f in dataclasses.fields(cls)})

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> "Settings":
        """Settings from JSON values; a missing, unknown or mistyped field raises UserError
        naming `source`."""
        fields = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) != set(fields):
            raise UserError(f"{source}: post-processing settings must have exactly the fields "
                            f"{sorted(fields)}; got {values!r}")
        for name, kind in fields.items():
            value = values[name]
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not (isinstance(value, bool) if kind is bool else numeric):
                raise UserError(f"{source}: {name}={value!r} should be a {kind.__name__}")
        return cls(**{name: kind(values[name]) for name, kind in fields.items()})

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


class Window(NamedTuple):
    """A rectangle of a frame: rows [top, bottom), cols [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)


def bounding_window(mask: np.ndarray, margin: int = 1) -> Window | None:
    """The bounding box of a [H, W] mask's pixels grown by `margin` (within the frame), or
    None when the mask is empty.

    With margin >= 1 the window's border pixels are background connected to the frame's
    border, so hole filling inside the window equals hole filling on the whole frame.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Window(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, mask.shape[0]),
                  max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, mask.shape[1]))


class Components(NamedTuple):
    """The 8-connected components of a mask, labelled inside a window of it."""

    window: Window | None
    labels: np.ndarray  # [window rows, window cols] int: 0 = background, 1..n = components.
    areas: np.ndarray  # [n + 1] int: areas[i] = pixels of component i (areas[0]: background).
    shape: tuple[int, int]  # The frame's shape.


def label_components(mask: np.ndarray) -> Components:
    """[H, W] bool -> its 8-connected components, numbered in raster order of their first
    pixel."""
    window = bounding_window(mask, margin=0)
    if window is None:
        return Components(None, np.zeros((0, 0), np.int32), np.zeros(1, np.int64), mask.shape)
    labels = measure.label(mask[window.slices], connectivity=2)
    return Components(window, labels, np.bincount(labels.ravel()), mask.shape)


def selected_components(areas: np.ndarray, min_component_area: int,
                        largest_component_only: bool) -> np.ndarray:
    """Labels kept from components of `areas` (as in Components): those with at least
    `min_component_area` pixels, or only the largest of them (the first one on a tie)."""
    kept = np.flatnonzero(areas[1:] >= max(min_component_area, 1)) + 1
    if largest_component_only and kept.size > 1:
        kept = kept[[np.argmax(areas[kept])]]
    return kept


def components_mask(components: Components, kept: np.ndarray) -> np.ndarray:
    """[H, W] bool mask of the components whose labels are in `kept`."""
    out = np.zeros(components.shape, bool)
    if components.window is not None and kept.size:
        lookup = np.zeros(components.areas.size, bool)
        lookup[kept] = True
        out[components.window.slices] = lookup[components.labels]
    return out


def drop_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """[H, W] bool -> the components of at least `min_area` pixels."""
    components = label_components(mask)
    return components_mask(components, selected_components(components.areas, min_area, False))


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> only its largest component (empty stays empty)."""
    components = label_components(mask)
    return components_mask(components, selected_components(components.areas, 0, True))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> the mask with every hole (background not 4-connected to the frame's
    border) filled."""
    window = bounding_window(mask, margin=1)
    if window is None:
        return mask.copy()
    local = mask[window.slices]
    # As ndimage.binary_fill_holes, but by labelling the background once instead of growing
    # it from the border step by step: the 4-connected background regions that touch the
    # window's border are outside, the others are holes.
    background, count = ndimage.label(~local)
    outside = np.zeros(count + 1, bool)
    outside[0] = True  # Label 0 is the mask itself.
    outside[background[[0, -1], :]] = True
    outside[background[:, [0, -1]]] = True
    out = mask.copy()
    out[window.slices] = ~outside[background] | local
    return out


class Ellipse(NamedTuple):
    """An ellipse as skimage.draw.ellipse takes it: the `row_radius` semi-axis is turned by
    `rotation` radians counter-clockwise from the row axis."""

    row: float
    col: float
    row_radius: float
    col_radius: float
    rotation: float


def ellipses_of(components: Components) -> list[Ellipse]:
    """The ellipse with the centroid and second moments of each component, in label order:
    skimage.measure.regionprops' centroid, orientation and axis lengths, computed for all
    components at once from integer sums of frame coordinates (so the same component gives
    the same ellipse whatever window it was labelled in)."""
    if components.window is None:
        return []
    pixels = np.flatnonzero(components.labels)
    labels = components.labels.ravel()[pixels]
    rows, cols = np.divmod(pixels, components.labels.shape[1])
    rows, cols = rows + components.window.top, cols + components.window.left

    def per_component(values: np.ndarray) -> np.ndarray:
        return np.bincount(labels, weights=values.astype(np.float64),
                           minlength=components.areas.size)[1:]

    n = components.areas[1:].astype(np.float64)
    row_sum, col_sum = per_component(rows), per_component(cols)
    row_var = (per_component(rows * rows) - row_sum * row_sum / n) / n
    col_var = (per_component(cols * cols) - col_sum * col_sum / n) / n
    covariance = (per_component(rows * cols) - row_sum * col_sum / n) / n
    # regionprops' inertia tensor [[a, b], [b, c]] and its orientation convention.
    a, b, c = col_var, -covariance, row_var
    spread = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
    major = 4 * np.sqrt(np.maximum((a + c) / 2 + spread, 0))
    minor = 4 * np.sqrt(np.maximum((a + c) / 2 - spread, 0))
    orientation = np.where(a == c, np.where(b < 0, np.pi / 4, -np.pi / 4),
                           0.5 * np.arctan2(-2 * b, c - a))
    # A line of pixels has a zero minor axis; half a pixel keeps it drawable.
    return [Ellipse(*values) for values in zip(
        row_sum / n, col_sum / n, np.maximum(major / 2, 0.5), np.maximum(minor / 2, 0.5),
        orientation, strict=True)]


def component_ellipses(mask: np.ndarray) -> list[Ellipse]:
    """The fitted ellipse of each 8-connected component of a [H, W] bool mask (ellipses_of)."""
    return ellipses_of(label_components(mask))


def ellipse_pixels(e: Ellipse, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels inside the ellipse, cut at the frame's edges."""
    return draw.ellipse(e.row, e.col, e.row_radius, e.col_radius, shape=shape,
                        rotation=e.rotation)


def draw_ellipses(ellipses: Iterable[Ellipse], shape: tuple[int, int]) -> np.ndarray:
    """[H, W] bool mask of the union of the ellipses, cut at the frame's edges."""
    out = np.zeros(shape, bool)
    for e in ellipses:
        out[ellipse_pixels(e, shape)] = True
    return out


def fit_ellipses(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> each component replaced by its fitted ellipse (see component_ellipses)."""
    return draw_ellipses(component_ellipses(mask), mask.shape)


def refine_shape(components: Components, kept: np.ndarray, fill: bool,
                 ellipse: bool) -> np.ndarray:
    """The kept components of a thresholded mask, holes filled and/or replaced by fitted
    ellipses: the shape steps of `apply`. -> [H, W] bool."""
    mask = components_mask(components, kept)
    if fill:
        mask = fill_holes(mask)
    if ellipse:
        mask = fit_ellipses(mask)
    return mask


def apply(probs: np.ndarray, presence: float, settings: Settings) -> np.ndarray:
    """One frame's full-resolution probabilities [H, W] float32 and presence probability
    -> its mask [H, W] bool, by the steps of `settings` in field order."""
    if presence < settings.presence_threshold:
        return np.zeros(probs.shape, bool)
    components = label_components(probs > settings.threshold)
    kept = selected_components(components.areas, settings.min_component_area,
                               settings.largest_component_only)
    mask = refine_shape(components, kept, settings.fill_holes, settings.ellipse_fit)
    if np.count_nonzero(mask) < settings.min_mask_area:
        mask[:] = False
    return mask


def apply_batch(probs: np.ndarray, presence: np.ndarray, settings: Settings) -> np.ndarray:
    """`apply` on each frame: probs [B, H, W] float32, presence [B] -> masks [B, H, W] bool."""
    return np.stack([apply(p, float(q), settings) for p, q in zip(probs, presence, strict=True)])


def save(workdir: str, settings: Settings, report: dict) -> str:
    """Writes workdir/postprocess.json (atomically): the settings and how they were chosen."""
    path = fileio.join(workdir, POSTPROCESS_FILE)
    with atomic_open(path) as f:
        json.dump({"settings": dataclasses.asdict(settings), **report}, f, indent=2)
    return path


def load(workdir: str) -> tuple[Settings, dict] | None:
    """(settings, the rest of the file) from workdir/postprocess.json, or None without one."""
    path = fileio.join(workdir, POSTPROCESS_FILE)
    if not fileio.isfile(path):
        return None
    try:
        content = json.loads(fileio.read_text(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable post-processing file ({e}); rerun "
                        "`nerve-jax tune` or delete it") from None
    # Earlier versions wrote the settings under "params".
    key = next((k for k in ("settings", "params") if isinstance(content, dict) and k in content),
               None)
    if key is None:
        raise UserError(f"{path}: no 'settings' in it; rerun `nerve-jax tune` or delete it")
    report = {k: v for k, v in content.items() if k != key}
    return Settings.from_dict(content[key], path), report
