"""nerve-jax: brachial plexus nerve segmentation in neck ultrasound, in JAX/Flax.

Importing it changes nothing in the process (no environment variables, no matplotlib backend,
no TensorFlow start); `nerve_jax.runtime.configure()` applies the runtime settings explicitly.
"""

# Registers the TFDS builder, so tfds.load("ultrasound_nerve", ...) works after `import nerve_jax`
# (tensorflow_datasets loads TensorFlow only when a dataset is read).
from nerve_jax.data import tfds_builder as _tfds_builder  # noqa: F401


def __getattr__(name: str):
    # nerve_jax.Segmenter, imported when first used: it brings JAX and TensorFlow.
    if name == "Segmenter":
        from nerve_jax.submit.inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'nerve_jax' has no attribute {name!r}")
