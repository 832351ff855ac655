"""Records the golden values of tests/test_golden.py: parameters, batch statistics, train losses
and validation Dice after 3 steps of configs/test.py on the tests' tiny synthetic data, for the
default loss and for the presence head with every loss term on.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python tests/golden/record.py

Recorded before the model/loss/train_step refactor of the research API, so that the code after
it is checked against the code before it; recorded again when the training batches came to be
drawn by pipeline.LaneSampler (another data order, the same step) and only then.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests import golden_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    from nerve_jax import runtime

    runtime.configure()
    import numpy as np

    from nerve_jax.data import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        synthetic.generate(data, num_subjects=4, frames_per_subject=6, num_test=4, seed=1)
        for case in golden_path.CASES:
            values = golden_path.run(case, data, os.path.join(tmp, case))
            np.savez(os.path.join(HERE, f"{case}.npz"), **values)
            print(case, {k: v for k, v in values.items() if not k.startswith("params/")
                         and not k.startswith("batch_stats/")})


if __name__ == "__main__":
    main()
