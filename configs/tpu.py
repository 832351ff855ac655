"""The TPU chips of one host, bfloat16, on the real data (--config.kaggle_dir=DIR): a Colab
TPU runtime (v2-8: 8 cores of 8 GiB; v5e-1: 1 chip of 16 GiB) or a v5e/v6e host (4 or 8 chips
of 16 / 32 GiB). For a pod slice, launch every host with --distributed.

Memory: 79 MiB of temporaries per image in float32 at 128x176 for the default UNet (see
configs/gpu.py), about half in bfloat16. The global batch of 128 splits evenly over 1, 2, 4 or
8 chips: 16 per core on a v2-8 (~0.7-1.3 GiB of 8), 128 on a single v5e chip (~5-10 GiB of 16).
Same batch and learning rate as configs/gpu.py, so runs on either compare step for step.
"""

from configs import gpu


def get_config():
    return gpu.get_config()
