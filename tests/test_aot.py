"""`nerve-jax aot`: the real train step compiled by XLA for TPU topologies that are not
attached (libtpu on this CPU-only machine), its figures per chip and its collectives; the
errors; the largest-batch search; and libtpu installed for it leaving a CPU host's settings."""

import pytest

from nerve_jax import aot, cli, config_util, runtime
from tests.conftest import TEST_CONFIG

needs_libtpu = pytest.mark.skipif(not aot.compiler_installed("tpu"),
                                  reason="libtpu is not installed: pip install -e '.[tpu]'")


def _aot(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["aot", "--config", TEST_CONFIG, *args])
    return code, capsys.readouterr().err


def test_an_unknown_topology_exits_2_naming_the_known_ones(capsys):
    code, err = _aot(capsys, "--topology", "v5e:3x3")
    assert code == 2
    assert err.strip() == f"error: --topology=v5e:3x3: unknown; known: {', '.join(aot.TARGETS)}"


@pytest.mark.parametrize("topology, install", [("v5e:1x1", "pip install -e '.[tpu]'"),
                                               ("h100", "pip install -e '.[cuda12]'")])
def test_a_missing_compiler_exits_2_with_the_install(topology, install, capsys, monkeypatch):
    monkeypatch.setattr(aot, "compiler_installed", lambda platform: False)
    code, err = _aot(capsys, "--topology", topology)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.strip().endswith(install), err


def test_libtpu_alone_leaves_a_cpu_host_on_the_cpu_settings(tmp_path, monkeypatch):
    """libtpu (installed for aot) counts as a TPU host only where a TPU chip is on the PCI bus:
    elsewhere the XLA:CPU flags, huge pages and gloo stay on."""
    def device(name, vendor, device_id):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device_id + "\n")

    device("0000:00:04.0", "0x1ae0", "0x0042")  # Google's virtual NIC on a CPU VM.
    assert not runtime.tpu_chips_attached(str(tmp_path))
    device("0000:00:05.0", "0x1ae0", "0x0063")  # A TPU v5e chip.
    assert runtime.tpu_chips_attached(str(tmp_path))

    monkeypatch.setattr(runtime.importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name: object() if name == "libtpu" else None)
    for attached in (False, True):
        monkeypatch.setattr(runtime, "tpu_chips_attached", lambda a=attached: a)
        assert runtime.accelerator_expected({}) is attached


HLO = """\
HloModule jit_step
  %all-reduce.20 = (f32[3,3,1,4]{3,2,1,0:T(1,128)}, /*index=1*/f32[8]{0}, f32[]) all-reduce(%a, \
%b, %c), channel_id=1, metadata={op_name="jit(step)/shard_map/psum" stack_frame_id=2}
  %psum.406 = f32[2,4]{1,0:T(2,128)S(1)} all-reduce(%x), metadata={op_name="jit(step)/psum" \
stack_frame_id=1}
  %ars = bf16[16]{0} all-reduce-start(%y), metadata={op_name="jit(step)/psum" stack_frame_id=1}
  %ard = bf16[16]{0} all-reduce-done(%ars), metadata={op_name="jit(step)/psum" stack_frame_id=1}
  %ag = s32[4,2]{1,0} all-gather(%z), metadata={op_name="jit(f)/all_gather" \
source_file="/x/site-packages/jax/_src/y.py" source_line=7}

FileNames
1 "/v/lib/python3.11/site-packages/flax/linen/normalization.py"
2 "/repo/nerve_jax/step.py"

FunctionNames
1 "_compute_stats"
2 "train_step"

FileLocations
1 {file_name_id=1 function_name_id=1 line=128 end_line=128 column=5 end_column=5}
2 {file_name_id=2 function_name_id=2 line=159 end_line=159 column=15 end_column=15}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=1}
"""


def test_collectives_are_counted_once_with_their_bytes_and_source_line():
    found = {(c.op, c.where): (c.count, c.bytes) for c in aot.collectives(HLO)}
    assert found == {
        ("all-reduce", "psum at nerve_jax/step.py:159 train_step"): (1, (9 * 4 + 8 + 1) * 4),
        ("all-reduce", "psum at flax/linen/normalization.py:128 _compute_stats"): (2, 32 + 32),
        ("all-gather", "all_gather at jax/_src/y.py:7"): (1, 32),
    }


def _fake_compile(per_image: float, fixed: float, refuses_from: int):
    """compile_program's stand-in: memory linear in the per-chip batch, XLA refusing programs
    from `refuses_from` images per chip."""
    def compile_program(kind, config, name, global_batch=None):
        chips = aot.TARGETS[name].chips
        b = global_batch // chips
        if b >= refuses_from:
            return aot.Program(kind, global_batch, b, False, error="RESOURCE_EXHAUSTED")
        total = int((fixed + per_image * b) * aot.GIB)
        return aot.Program(kind, global_batch, b, total <= 16 * aot.GIB, temporaries=total)
    return compile_program


@pytest.mark.parametrize("name, start, want", [("v5e:1x1", 64, 444), ("v5e:2x2", 64, 4 * 444),
                                               ("v5e:1x1", 2048, 444)])
def test_the_largest_batch_is_the_last_multiple_of_the_chips_that_fits(
        name, start, want, monkeypatch, test_config):
    """0.5 GiB + 1/32 GiB per image on a chip, 10% of 16 GiB left free (14.4 GiB): 444 images
    per chip; from below (doubling) and from above (halving, through XLA refusing)."""
    monkeypatch.setattr(aot, "compile_program", _fake_compile(1 / 32, 0.5, 1024))
    monkeypatch.setattr(aot, "check_compiler", lambda t: None)
    monkeypatch.setattr(aot, "devices", lambda name: ())
    config = test_config()
    config.batch_size = start
    search = aot.largest_batch(config, name)
    assert search.largest.global_batch == want
    assert len(search.probes) <= 9  # Interpolation: few compiles past the bracket.


@pytest.fixture(scope="module")
def compiled():
    """The test config's train step for 1 and 4 v5e chips (global batch 8: 8 and 2 images per
    chip): 15 and 7 s of compiling on 2 cores."""
    config = config_util.load_config_file(TEST_CONFIG)
    with pytest.MonkeyPatch.context() as env:  # What aot sets before libtpu loads, undone.
        for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                            ("TPU_WORKER_HOSTNAMES", "localhost")):
            env.setenv(name, value)
        reports = {name: aot.compile_config(config, name, programs=("train",))
                   for name in ("v5e:1x1", "v5e:2x2")}
    return {"reports": reports}


@pytest.mark.slow
@needs_libtpu
def test_the_train_step_compiles_for_one_and_four_chips(compiled):
    for report in compiled["reports"].values():
        (train,) = report.programs
        assert train.name == "train" and train.fits and train.global_batch == 8
        assert 0 < train.total < report.target.memory_gib * aot.GIB
        assert train.flops > 0 and train.donated > 0 and train.batch > 0
        lines = aot.report_lines(report)
        assert any(line.startswith("  total ") and "headroom" in line for line in lines)


@pytest.mark.slow
@needs_libtpu
def test_the_four_chip_program_takes_a_quarter_of_the_batch_per_chip(compiled):
    one, four = (compiled["reports"][n].programs[0] for n in ("v5e:1x1", "v5e:2x2"))
    h, w = config_util.load_config_file(TEST_CONFIG).image_size
    assert four.per_chip_batch == 2 and one.per_chip_batch == 8
    assert four.batch >= 2 * 2 * h * w * 4  # Image and mask, float32, 2 per chip (XLA pads).
    assert one.batch == 4 * four.batch
    assert four.donated == one.donated  # Replicated: every chip holds the whole state.
    assert four.flops < one.flops


@pytest.mark.slow
@needs_libtpu
def test_the_four_chip_program_holds_the_gradient_all_reduce(compiled):
    import jax

    from nerve_jax import step

    one, four = (compiled["reports"][n].programs[0] for n in ("v5e:1x1", "v5e:2x2"))
    assert one.collectives == ()  # One chip: nothing to exchange.
    params = jax.eval_shape(lambda: step.create_train_state(
        config_util.load_config_file(TEST_CONFIG), jax.random.key(0))).params
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    gradients = [c for c in four.collectives
                 if c.op == "all-reduce" and "nerve_jax/step.py" in c.where
                 and "train_step" in c.where and c.bytes >= param_bytes]
    assert len(gradients) == 1 and gradients[0].count == 1
    batch_norm = [c for c in four.collectives if "normalization.py" in c.where]
    assert batch_norm and all(c.op == "all-reduce" for c in batch_norm)


@pytest.mark.slow
@needs_libtpu
def test_the_reported_memory_grows_with_the_batch(compiled):
    """Per chip, 8 images against 2 (the same replicated state): more batch and more in all."""
    eight, two = (compiled["reports"][n].programs[0] for n in ("v5e:1x1", "v5e:2x2"))
    assert eight.batch == 4 * two.batch
    assert eight.total > two.total + 3 * two.batch
