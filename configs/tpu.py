"""One TPU chip, bfloat16, on the real data (--config.kaggle_dir=DIR): a Colab TPU runtime (one
chip today, jax.device_count() == 1: v5e-1 with 16 GiB, or v6e-1 with 32 GiB), or the 4 chips of
a v5e, v6e or v4 host. Several hosts: configs/tpu_pod.py.

Batch: 128 global. XLA's figures per chip (`nerve-jax aot --config configs/tpu.py --topology
v5e:1x1`, jax 0.10.2, libtpu 0.0.42.1; docs/distributed.md#ahead-of-time-compilation): the train
step needs 3.67 GiB of a v5e chip's 16 GiB (5.78 GiB in float32), 3.69 GiB of a v6e chip's 32
GiB (`--topology v6e:1x1`) and 2.48 GiB per chip on 4 chips (`v5e:2x2`, `v4:2x2x1`); evaluation
and prediction at 256 take 1.50 and 1.34 GiB of a v5e chip. `--largest-batch` finds 672 images
for one v5e chip with 10% of it left free, so it is the data (35 steps per epoch at 128), not
the memory, that sets the batch. Same batch and learning rate as configs/gpu.py, so runs on
either compare step for step.
"""

from configs import gpu


def get_config():
    return gpu.get_config()
