"""One H100/H200-class GPU, bfloat16, on the real data (--config.kaggle_dir=DIR).

Memory: XLA's buffer assignment for the default UNet (depth 4, 32 base features, 7.76 M
parameters) at 128x176 needs 79 MiB of temporaries per image in float32 (1239 MiB at batch 16,
5033 MiB at batch 64; compiled with jax 0.10.2, `memory_analysis()`, see docs/performance.md);
bfloat16 activations take about half. Batch 128 in bfloat16 is then ~5-10 GiB: under an eighth of
an 80 GiB H100 and a fourteenth of a 141 GiB H200, so it is the data, not the memory, that sets
it: ~4,500 training frames per fold give 35 steps per epoch at 128. The learning rate follows
the batch from the default's 1e-3 at 32 by the square root (2e-3 at 128).
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
