"""One H100/H200-class GPU, bfloat16, on the real data (--config.kaggle_dir=DIR).

Memory: XLA's figures for one H100 80GB, compiled on a CPU-only machine without one
(`nerve-jax aot --config configs/gpu.py --topology h100`, jax-cuda12-plugin 0.10.2;
docs/distributed.md#ahead-of-time-compilation): the train step at batch 128 needs 3.46 GiB in
bfloat16 (6.90 GiB in float32) of 79.1 GiB, evaluation and prediction at 256 1.82 and 1.66 GiB.
Without a device XLA cannot time the candidate convolution algorithms, so a run may differ
(benchmarks/device_check.py compares). The largest batch within 90% of the H100 is 4,542, so it
is the data, not the memory, that sets it: ~4,500 training frames per fold give 35 steps per
epoch at 128. The learning rate follows the batch from the default's 1e-3 at 32 by the square
root (2e-3 at 128).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.dtype = "bfloat16"
    config.batch_size = 128
    config.eval_batch_size = 256
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.log_every_steps = 50
    config.eval_every_steps = 200
    return config
