"""tf.data input pipelines: subject split, resize, sampling, batch, prefetch; host sharding.

Every pipeline yields this process's share of a global batch as NumPy arrays:
  train: image [b, h, w, 1] float32 in [0, 1], mask [b, h, w, 1] float32 in {0, 1}
  eval:  image [b, h, w, 1], mask_full [b, 420, 580] bool, subject [b] int32, frame [b] int32,
         valid [b] bool (False = padding, subject = frame = -1)
  test:  image [b, h, w, 1], id [b] int32, valid [b] bool
"""

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nerve_jax import runtime
from nerve_jax.data import augment, duplicates, kaggle
from nerve_jax.errors import UserError

_SKIP_IMAGES = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}

CLEAN_MODES = ("keep", "drop", "relabel")


class ConfigValueError(UserError, ValueError):
    """A config field holds a value outside its choices."""


def split_subjects(subjects: Sequence[int], num_folds: int, fold: int,
                   seed: int) -> tuple[list[int], list[int]]:
    """Subject-grouped k-fold: (train subjects, validation subjects) for `fold`.

    Subjects are shuffled by `seed` and dealt into `num_folds` near-equal folds, so a subject's
    frames (near-duplicates of each other) never straddle training and validation.
    """
    subjects = sorted(set(int(s) for s in subjects))
    if num_folds < 2 or num_folds > len(subjects):
        raise ConfigValueError(f"config.num_folds={num_folds} must be between 2 and the number of "
                         f"subjects ({len(subjects)})")
    if not 0 <= fold < num_folds:
        raise ConfigValueError(f"config.fold={fold} must be in [0, {num_folds})")
    order = np.random.default_rng(seed).permutation(subjects)
    val = sorted(np.array_split(order, num_folds)[fold].tolist())
    return [s for s in subjects if s not in val], val


def resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """uint8 [H, W, 1] -> float32 [h, w, 1] in [0, 1], antialiased bilinear."""
    image = tf.cast(image, tf.float32) / 255.0
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def resize_mask(mask: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """{0, 1} [H, W, 1] -> float32 {0, 1} [h, w, 1]: pixels at least half covered."""
    covered = tf.image.resize(tf.cast(mask, tf.float32), size, method="area")
    return tf.cast(covered >= 0.5, tf.float32)


def subject_frames(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                    decode_images: bool = True) -> tf.data.Dataset:
    """All training frames of `subjects`, in the builder's fixed order; with `decode_images`
    False, "image" and "mask" stay PNG bytes (decode what you need with tf.io.decode_png)."""
    decoders = None if decode_images else _SKIP_IMAGES
    ds = builder.as_dataset(split="train", shuffle_files=False, decoders=decoders)
    wanted = tf.constant(sorted(subjects), tf.int32)
    return ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["subject"], wanted)))


def _this_process(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.shard(jax.process_count(), jax.process_index())


def local_batch_size(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ValueError(f"batch size {global_batch} must be divisible by the number of "
                         f"processes ({jax.process_count()})")
    return global_batch // jax.process_count()


def check_clean_mode(clean: str) -> None:
    """Raises ValueError (a UserError too) unless `clean` is one of CLEAN_MODES."""
    if clean not in CLEAN_MODES:
        raise ConfigValueError(f"config.clean={clean!r}: choose one of {CLEAN_MODES}")


class LaneSampler:
    """Which frames make the global batch of each step, the same on any number of processes.

    The frames are dealt at random (by `seed`) into `global_batch` lanes of near-equal size;
    slot j of every global batch takes the next frame of lane j, and each lane runs through its
    frames in an order reshuffled every time it is exhausted (its epoch). So over each lane
    epoch every frame is seen once, a batch is a function of (seed, step) alone, and a process
    that feeds slots [first, first + b) only ever reads the frames of those lanes.
    """

    def __init__(self, num_frames: int, global_batch: int, seed: int):
        if num_frames < global_batch:
            raise UserError(f"config.batch_size={global_batch} is larger than the {num_frames} "
                            "training frames")
        lane = np.random.default_rng([seed, _LANE_STREAM]).permutation(num_frames) % global_batch
        self.lanes = [np.flatnonzero(lane == j) for j in range(global_batch)]
        self.seed = seed
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def frames(self, step: int, slots: range) -> np.ndarray:
        """[len(slots)] indices of the frames in `slots` of the global batch of `step`."""
        return np.array([self._frame(step, j) for j in slots], np.int64)

    def _frame(self, step: int, slot: int) -> int:
        members = self.lanes[slot]
        epoch, position = divmod(step, len(members))
        cached = self._orders.get(slot)
        if cached is None or cached[0] != epoch:
            order = np.random.default_rng([self.seed, slot, epoch]).permutation(len(members))
            self._orders[slot] = cached = (epoch, order)
        return int(members[cached[1][position]])


_LANE_STREAM = 0x1A2E  # Keeps the lane deal apart from the lanes' own orders.


def process_slots(global_batch: int) -> range:
    """The slots of a global batch that this process feeds."""
    batch = local_batch_size(global_batch)
    return range(jax.process_index() * batch, (jax.process_index() + 1) * batch)


def train_batches(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                  image_size: Sequence[int], global_batch: int, seed: int,
                  start_step: int = 0, clean: str = "keep",
                  duplicate_threshold: float = duplicates.DEFAULT_THRESHOLD,
                  augment_config: Mapping | None = None) -> Iterator[dict]:
    """Endless training batches: this process's slots of the global batch of each step, drawn
    by LaneSampler, so the global batches are the same whatever the number of processes, and
    starting at `start_step` yields exactly what a run from step 0 yields from that step on.

    `clean` treats the empty-mask member of each contradictory near-duplicate pair (see
    duplicates.py, at `duplicate_threshold`): "keep" it as labelled, "drop" it, or "relabel" it
    with the mask of its closest nerve twin. `augment_config` (`config.augment`) augments each
    batch after the cache, with parameters drawn from (seed, step, slot); disabled or None
    leaves the batches untouched. Only the frames of this process's lanes are decoded, once,
    and held in memory at model resolution.
    """
    check_clean_mode(clean)
    augmentation = augment.from_config(augment_config)
    slots = process_slots(global_batch)
    twins = _contradictory_twins(builder, subjects, clean, duplicate_threshold)
    names = [n for n in frame_names(builder, subjects) if not (clean == "drop" and n in twins)]
    sampler = LaneSampler(len(names), global_batch, seed)
    mine = np.unique(np.concatenate([sampler.lanes[j] for j in slots]))
    wanted = np.zeros(len(names), bool)
    wanted[mine] = True
    frames = _load_frames(_clean(subject_frames(builder, subjects), clean, twins, builder,
                                 subjects), wanted, tuple(image_size))
    position = np.full(len(names), -1, np.int64)
    position[mine] = np.arange(len(mine))

    def batches():
        for step in itertools.count(start_step):
            rows = position[sampler.frames(step, slots)]
            yield {"image": frames["image"][rows], "mask": frames["mask"][rows]}

    spec = tf.TensorSpec((len(slots), *image_size, 1), tf.float32)
    ds = tf.data.Dataset.from_generator(batches, output_signature={"image": spec, "mask": spec})
    if augmentation is not None:
        ds = augment.augment_batches(ds, augmentation, seed, start_step,
                                     (slots.start, global_batch))
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _load_frames(ds: tf.data.Dataset, wanted: np.ndarray, size: tuple[int, int]) -> dict:
    """{"image", "mask": [n, h, w, 1] float32}: the n frames of `ds` where `wanted` (bool, one
    per frame) is True, in order, resized for the model."""
    wanted_tensor = tf.constant(wanted)

    def keep(index, ex):
        return wanted_tensor[index]

    def preprocess(index, ex):
        return {"image": resize_image(ex["image"], size), "mask": resize_mask(ex["mask"], size)}

    ds = ds.enumerate().filter(keep).map(preprocess, tf.data.AUTOTUNE).batch(256)
    parts = list(ds.as_numpy_iterator())
    return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "mask")}


def frame_names(builder: tfds.core.DatasetBuilder, subjects: Sequence[int]) -> list[str]:
    """"<subject>_<frame>" of the training frames of `subjects`, in subject_frames' order."""
    ds = subject_frames(builder, subjects, decode_images=False).map(_frame_name)
    return [name.decode() for name in ds.as_numpy_iterator()]


def _frame_name(ex: dict) -> tf.Tensor:
    return tf.strings.join([tf.strings.as_string(ex["subject"]), "_",
                            tf.strings.as_string(ex["frame"])])


def contradictory_pairs_in_split(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                                 threshold: float = duplicates.DEFAULT_THRESHOLD,
                                 ) -> list[duplicates.Pair]:
    """duplicates.find_contradictory_pairs over the training frames of `subjects` in a TFDS
    `ultrasound_nerve` builder."""
    names, frame_subjects, has_nerve, signatures = [], [], [], []
    ds = subject_frames(builder, [int(s) for s in subjects], decode_images=False)
    ds = ds.map(lambda ex: {"image": tf.io.decode_png(ex["image"], channels=1)[..., 0],
                            "subject": ex["subject"], "frame": ex["frame"],
                            "has_nerve": ex["has_nerve"]}, tf.data.AUTOTUNE)
    for ex in ds.as_numpy_iterator():
        names.append(f"{ex['subject']}_{ex['frame']}")
        frame_subjects.append(int(ex["subject"]))
        has_nerve.append(bool(ex["has_nerve"]))
        signatures.append(duplicates.frame_signature(ex["image"]))
    if not names:
        return []
    return duplicates.find_contradictory_pairs(names, frame_subjects, has_nerve,
                                               np.stack(signatures), threshold)


def _contradictory_twins(builder: tfds.core.DatasetBuilder, subjects: Sequence[int], clean: str,
                        threshold: float) -> dict[str, duplicates.Pair]:
    """{empty frame's name: its closest nerve twin} among `subjects`' frames; {} for "keep"."""
    if clean == "keep":
        return {}
    pairs = contradictory_pairs_in_split(builder, subjects, threshold)
    twins = duplicates.closest_nerve_twins(pairs)
    runtime.logger().info(
        "config.clean=%r: %s %d of the training frames, the empty-mask members of %d "
        "contradictory pairs at distance <= %g", clean,
        "dropped" if clean == "drop" else "relabelled", len(twins), len(pairs), threshold)
    return twins


def _clean(ds: tf.data.Dataset, clean: str, twins: Mapping[str, duplicates.Pair],
           builder: tfds.core.DatasetBuilder, subjects: Sequence[int]) -> tf.data.Dataset:
    """Drops or relabels the empty members of contradictory pairs (`twins`)."""
    if clean == "keep" or not twins:
        return ds
    empty = tf.constant(sorted(twins))
    if clean == "drop":
        return ds.filter(lambda ex: tf.logical_not(tf.reduce_any(_frame_name(ex) == empty)))
    sources = [twins[name].with_nerve for name in sorted(twins)]
    png_masks = _png_masks(builder, subjects, set(sources))
    source_masks = tf.constant([png_masks[name] for name in sources])

    def relabel(ex):
        hit = _frame_name(ex) == empty

        def twin_mask():
            png = source_masks[tf.argmax(tf.cast(hit, tf.int32))]
            return tf.ensure_shape(tf.io.decode_png(png, channels=1), ex["mask"].shape)

        return {**ex, "mask": tf.cond(tf.reduce_any(hit), twin_mask, lambda: ex["mask"])}

    return ds.map(relabel, tf.data.AUTOTUNE)


def _png_masks(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                   names: set[str]) -> dict[str, bytes]:
    """{name: PNG-encoded [420, 580, 1] {0, 1} mask} for the frames `names` of `subjects`."""
    ds = subject_frames(builder, subjects, decode_images=False)
    ds = ds.map(lambda ex: (_frame_name(ex), ex["mask"]))
    return {name.decode(): mask for name, mask in ds.as_numpy_iterator()
            if name.decode() in names}


def _count(ds: tf.data.Dataset) -> int:
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _padded_batches(ds: tf.data.Dataset, num_examples: int, global_batch: int,
                    padding: dict) -> tf.data.Dataset:
    """Pads with `padding` (valid=False) so every process yields the same number of full
    batches, as collectives across processes require."""
    batch = local_batch_size(global_batch)
    per_process = -(-num_examples // jax.process_count())
    num_batches = -(-per_process // batch)
    local = _count(ds)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_batches * batch - local))
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def eval_batches(builder: tfds.core.DatasetBuilder, subjects: Sequence[int],
                 image_size: Sequence[int], global_batch: int) -> Iterator[dict]:
    """Validation frames in order, with full-resolution masks for the Kaggle metric."""
    size = tuple(image_size)

    def preprocess(ex):
        return {"image": resize_image(ex["image"], size),
                "mask_full": tf.cast(ex["mask"][..., 0], tf.bool),
                "subject": ex["subject"], "frame": ex["frame"],
                "valid": tf.constant(True)}

    ds = _this_process(subject_frames(builder, subjects))
    ds = ds.map(preprocess, tf.data.AUTOTUNE).cache()
    num_examples = _count(subject_frames(builder, subjects, decode_images=False))
    padding = {"image": tf.zeros((*size, 1)),
               "mask_full": tf.zeros((kaggle.HEIGHT, kaggle.WIDTH), tf.bool),
               "subject": tf.constant(-1, tf.int32), "frame": tf.constant(-1, tf.int32),
               "valid": tf.constant(False)}
    return _padded_batches(ds, num_examples, global_batch, padding).as_numpy_iterator()


def test_batches(images: Sequence[kaggle.TestImage], image_size: Sequence[int],
                 global_batch: int) -> Iterator[dict]:
    """Test images (already checked by kaggle.scan_test) read straight from their TIFFs; "id"
    is the image's id."""
    mine = list(images)[jax.process_index()::jax.process_count()]

    def read(path):
        image = tf.numpy_function(lambda p: kaggle.read_tiff(os.fsdecode(p)), [path], tf.uint8)
        return tf.ensure_shape(image, (kaggle.HEIGHT, kaggle.WIDTH))

    ds = tf.data.Dataset.from_tensor_slices(
        ([im.path for im in mine], np.array([im.id for im in mine], np.int32)))
    return _image_batches(ds, read, len(images), image_size, global_batch)


def array_batches(images: np.ndarray, image_size: Sequence[int],
                  global_batch: int) -> Iterator[dict]:
    """Frames [N, 420, 580] uint8 given as an array, resized as test_batches resizes the TIFFs;
    "id" is the frame's index in `images`."""
    index = np.arange(len(images), dtype=np.int32)[jax.process_index()::jax.process_count()]
    ds = tf.data.Dataset.from_tensor_slices((images[index], index))
    return _image_batches(ds, lambda image: image, len(images), image_size, global_batch)


def _image_batches(ds: tf.data.Dataset, read, num_examples: int, image_size: Sequence[int],
                   global_batch: int) -> Iterator[dict]:
    """(source, id) pairs -> padded batches of image [b, h, w, 1] float32, id [b], valid [b]."""
    size = tuple(image_size)

    def load(source, image_id):
        image = read(source)[..., None]
        return {"image": resize_image(image, size), "id": image_id, "valid": tf.constant(True)}

    ds = ds.map(load, tf.data.AUTOTUNE)
    padding = {"image": tf.zeros((*size, 1)), "id": np.int32(-1), "valid": tf.constant(False)}
    return _padded_batches(ds, num_examples, global_batch, padding).as_numpy_iterator()


def frames_per_subject(builder: tfds.core.DatasetBuilder) -> dict[int, int]:
    """{subject: number of training frames}, read without decoding any image."""
    ds = builder.as_dataset(split="train", shuffle_files=False, decoders=_SKIP_IMAGES)
    subjects = np.fromiter(ds.map(lambda ex: ex["subject"]).as_numpy_iterator(), np.int64)
    values, counts = np.unique(subjects, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
