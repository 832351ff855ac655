"""The convolution benchmark's UNet inventory, and compare_torch's split of a step into
convolutions and the rest."""

import collections
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import compare_torch, conv_speed
from nerve_jax.models import unet

TINY = dict(height=32, width=48, features=4, depth=2)


def flax_kernel_shapes(model, height, width):
    params = model.init(jax.random.key(0), jnp.zeros((1, height, width, 1)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return collections.Counter(leaf.shape for path, leaf in flat
                               if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 4)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 4])
def test_unet_convolutions_are_the_models(depth):
    size = dict(TINY, depth=depth, height=64, width=80)
    convs = conv_speed.unet_convolutions(**size)
    model = unet.UNet(depth=depth, base_features=size["features"], upsample="pixel_shuffle")
    expected = flax_kernel_shapes(model, size["height"], size["width"])
    assert collections.Counter((c.size, c.size, c.cin, c.cout) for c in convs) == expected
    # Only the first convolution, on the image, has no input gradient in a train step.
    assert [c.input_grad for c in convs] == [False] + [True] * (len(convs) - 1)
    # Each convolution's input is the previous one's output size or a 2x upsampling of it.
    assert convs[0].height == size["height"] and convs[-1].height == size["height"]
    assert min(c.height for c in convs) == size["height"] >> depth


def test_main_times_every_unet_convolution(capsys):
    record = conv_speed.main(["--unet", "--height", "32", "--width", "48", "--batch", "2",
                              "--features", "4", "--depth", "2", "--repeats", "1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(record))
    convs = conv_speed.unet_convolutions(**TINY)
    assert [row["name"] for row in record["rows"]] == [c.name for c in convs]
    for key, total in record["totals"].items():
        assert total == pytest.approx(sum(row[key] for row in record["rows"]))


def fake_summary():
    median = {key: None for key, *_ in compare_torch.ROWS}
    return {"jax": {"median": dict(median, step_s_median=2.4)},
            "torch": {"median": dict(median, step_s_median=2.3)},
            "convolutions": {}}


def test_split_steps_subtracts_each_frameworks_convolutions():
    summary = fake_summary()
    compare_torch.split_steps(summary, {"xla_forward_s": 0.6, "xla_backward_s": 1.2,
                                        "torch_forward_s": 0.5, "torch_backward_s": 1.5})
    assert summary["jax"]["median"]["convolutions_s"] == pytest.approx(1.8)
    assert summary["jax"]["median"]["rest_s"] == pytest.approx(0.6)
    assert summary["torch"]["median"]["convolutions_s"] == pytest.approx(2.0)
    assert summary["torch"]["median"]["rest_s"] == pytest.approx(0.3)
    table = compare_torch.format_table(summary, ("jax", "torch"))
    assert "convolutions alone ms" in table and "rest of step ms" in table
    rest_line = next(line for line in table.splitlines() if line.startswith("rest of step"))
    assert rest_line.split()[-2:] == ["600", "300"]


def test_table_has_no_split_without_convs():
    summary = fake_summary()
    del summary["convolutions"]
    assert "rest of step" not in compare_torch.format_table(summary, ("jax", "torch"))


def test_convs_refuses_the_transpose_network(capsys):
    with pytest.raises(SystemExit):
        compare_torch.parse_args(["--convs", "--upsample", "transpose"])
    assert "--convs" in capsys.readouterr().err
