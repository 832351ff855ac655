"""Several TPU v5e chips, bfloat16, on the real data (--config.kaggle_dir=DIR): a v5e host of 8
chips (v5litepod-8) or a 16-chip slice on 4 hosts of 4 (v5litepod-16: launch every host with
--distributed).

Batch: 256 global, 32 images per chip on 8 chips and 16 on 16. XLA's figures per chip, from
`nerve-jax aot --config configs/tpu_pod.py --topology v5e:2x4` (and `v5e:4x4`; jax 0.10.2,
libtpu 0.0.42.1, docs/distributed.md#ahead-of-time-compilation): the train step needs 2.48 GiB
of a chip's 16 GiB on v5e:2x4 (1.14 GiB on v5e:4x4), evaluation and prediction at 256 0.62 and
0.60 GiB (0.31 and 0.30). Memory would allow over 20 times the per-chip batch (one v5e chip
fits 672 images a step with 10% left free); it is the data that sets it: ~4,500 training
frames per fold are 17 steps per epoch at 256. The learning rate follows the batch from the
default's 1e-3 at 32 by the square root (2.8e-3 at 256).
"""

from configs import gpu


def get_config():
    config = gpu.get_config()
    config.batch_size = 256
    config.eval_batch_size = 256
    config.learning_rate = 2.8e-3
    config.warmup_steps = 50
    config.log_every_steps = 20
    config.eval_every_steps = 100
    return config
