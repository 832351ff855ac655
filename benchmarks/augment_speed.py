"""Augmentation cost: tf.data (ImageProjectiveTransformV3) vs a jitted JAX warp, per batch.

  .venv/bin/python benchmarks/augment_speed.py [--config configs/default.py --repeats 20
      --subjects 4 --frames 40 --batches 20]

On one [B, h, w, 1] image batch and its mask at the config's image_size and batch_size, times
(median of --repeats, after a warm-up call):
  tf_warp:     the affine warp of image and mask as augment.py runs it (one bilinear
               ImageProjectiveTransformV3 call on the stacked [B, h, w, 2] pair);
  tf_augment:  augment.augment_batch with every transform of config.augment on (warp, mask
               threshold, gamma, contrast, brightness);
  jax_warp:    the same warp with the same matrices, jitted JAX (jax.scipy.ndimage
               .map_coordinates, order 1, vmapped over examples and channels), on the default
               JAX device.
It checks that the two warps agree, then times the warm (cached) train pipeline with
config.augment on and off on a synthetic TFDS dataset (--subjects x --frames; --batches 0
skips this part). Compare with the train step time that benchmarks/input_speed.py prints.
Prints images/s for each; the last line is one JSON object.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from jax.scipy import ndimage  # noqa: E402

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, runtime  # noqa: E402
from nerve_jax.data import augment, pipeline, synthetic, tfds_builder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ImageProjectiveTransformV3's REFLECT is half-sample symmetric (d c b a | a b c d), which
# is what scipy (and JAX) call "reflect"; the other names match.
JAX_MODES = {"reflect": "reflect", "nearest": "nearest", "constant": "constant"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "default.py"))
    p.add_argument("--repeats", type=int, default=20, help="timed calls per implementation")
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--batches", type=int, default=20, help="warm pipeline batches timed; 0: skip")
    return p.parse_args(argv)


def jax_warp(images: jax.Array, transforms: jax.Array, mode: str) -> jax.Array:
    """[B, H, W, C] float32 warped bilinearly by [B, 8] output -> input pixel maps (the
    ImageProjectiveTransformV3 convention, affine part only)."""
    height, width = images.shape[1:3]
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")

    def warp_one(image, t):
        source_cols = t[0] * cols + t[1] * rows + t[2]
        source_rows = t[3] * cols + t[4] * rows + t[5]

        def warp_channel(channel):
            return ndimage.map_coordinates(channel, [source_rows, source_cols], order=1,
                                           mode=mode)

        return jax.vmap(warp_channel, in_axes=-1, out_axes=-1)(image)

    return jax.vmap(warp_one)(images, transforms)


def random_batch(batch: int, size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speckle images [B, h, w, 1] in [0, 1] and ellipse masks [B, h, w, 1] {0, 1}, float32."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = rng.uniform(0.0, 1.0, (batch, height, width, 1)).astype(np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    centre = (rows - height * 0.4) ** 2 / (height * 0.15) ** 2 + (
        cols - width * 0.6) ** 2 / (width * 0.1) ** 2
    mask = np.broadcast_to((centre <= 1.0)[None, :, :, None], image.shape).astype(np.float32)
    return image, mask


def images_per_s(fn, batch: int, repeats: int) -> float:
    fn()  # Warm-up: tracing, compilation, thread pools.
    return batch / common.median(common.time_calls(fn, repeats))


def time_warps(settings: augment.Augmentation, batch: int, size, repeats: int) -> dict:
    image, mask = random_batch(batch, size)
    pair = tf.constant(np.concatenate([image, mask], axis=-1))
    seed = augment.batch_seed(0, 0)
    draws = tf.random.stateless_uniform((batch, 8), seed=seed)
    transforms = augment.affine_transforms(draws, settings, *size)

    tf_warp = tf.function(lambda: augment.warp(pair, transforms, settings.fill_mode))
    tf_batch = {"image": tf.constant(image), "mask": tf.constant(mask)}
    tf_augment = tf.function(lambda: augment.augment_batch(tf_batch, seed, settings))
    jax_pair, jax_transforms = jnp.asarray(pair.numpy()), jnp.asarray(transforms.numpy())
    jitted = jax.jit(jax_warp, static_argnames="mode")
    mode = JAX_MODES[settings.fill_mode]

    def run_jax():
        return jitted(jax_pair, jax_transforms, mode=mode).block_until_ready()

    # Same matrices, same interpolation: the two warps must agree before their times compare.
    difference = float(np.max(np.abs(np.asarray(run_jax()) - tf_warp().numpy())))
    return {
        "tf_warp_images_per_s": images_per_s(lambda: tf_warp().numpy(), batch, repeats),
        "tf_augment_images_per_s": images_per_s(
            lambda: tf_augment()["image"].numpy(), batch, repeats),
        "jax_warp_images_per_s": images_per_s(run_jax, batch, repeats),
        "max_abs_difference_tf_vs_jax": difference,
        "jax_device": str(jax.devices()[0].platform),
    }


def time_pipeline(config, subjects: int, frames: int, batches: int) -> dict:
    """Warm (cached) train-pipeline images/s with config.augment off and on."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.generate(os.path.join(tmp, "data"), num_subjects=subjects,
                           frames_per_subject=frames, num_test=4, seed=0,
                           workers=os.cpu_count() or 1)
        builder = tfds_builder.prepare(os.path.join(tmp, "data"), os.path.join(tmp, "tfds"))
        for name, enabled in (("off", False), ("on", True)):
            augment_config = config.augment.copy_and_resolve_references()
            augment_config.enabled = enabled
            stream = pipeline.train_batches(builder, list(range(1, subjects + 1)),
                                            config.image_size, config.batch_size, config.seed,
                                            augment_config=augment_config)
            next(stream)  # The frames are loaded when the stream starts.
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            rates[f"pipeline_augment_{name}_images_per_s"] = (
                batches * config.batch_size / (time.perf_counter() - start))
    return rates


def main(argv=None):
    args = parse_args(argv)
    runtime.start_tensorflow()
    config = config_util.load_config_file(args.config)
    settings = augment.from_config({**config.augment, "enabled": True})
    batch, size = config.batch_size, tuple(config.image_size)
    record = {"config": os.path.relpath(args.config, REPO), "image_size": list(size),
              "batch": batch, "augment": {k: config.augment[k] for k in augment.FIELDS},
              **time_warps(settings, batch, size, args.repeats)}
    if args.batches:
        record.update(time_pipeline(config, args.subjects, args.frames, args.batches))
    for name in ("tf_warp", "tf_augment", "jax_warp"):
        rate = record[f"{name}_images_per_s"]
        print(f"{name:10s} [{batch}, {size[0]}, {size[1]}, 1]: {rate:8.0f} images/s, "
              f"{1000 * batch / rate:6.1f} ms per batch")
    record["jax_warp_over_tf_warp_time"] = (record["tf_warp_images_per_s"]
                                           / record["jax_warp_images_per_s"])
    print(f"JAX warp ({record['jax_device']}) takes {record['jax_warp_over_tf_warp_time']:.2f}x "
          f"the tf.data warp; max |difference| {record['max_abs_difference_tf_vs_jax']:.2g}")
    if args.batches:
        print(f"warm pipeline: {record['pipeline_augment_off_images_per_s']:.0f} images/s "
              f"augmentation off, {record['pipeline_augment_on_images_per_s']:.0f} on")
    record["augment"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in record["augment"].items()}
    common.print_json(record)


if __name__ == "__main__":
    common.run_main(main)
