"""nerve-jax: brachial plexus nerve segmentation in neck ultrasound, in JAX/Flax."""

from nerve_jax.runtime import xla_flags as _xla_flags

# Before anything creates a JAX backend: XLA reads XLA_FLAGS once, when the first one starts.
_xla_flags.apply()

# Registers the TFDS builder, so tfds.load("ultrasound_nerve", ...) works after `import nerve_jax`.
from nerve_jax.data import tfds_builder as _tfds_builder  # noqa: E402, F401
