"""The paired A/B benchmark of XLA compiler options on the train step."""

import json

import pytest

from benchmarks import step_ab

TINY = ["--height", "32", "--width", "48", "--batch", "8", "--features", "4", "--depth", "2"]


def test_parse_options():
    assert step_ab.parse_options("base") == {}
    assert step_ab.parse_options("xla_cpu_enable_fast_math=false;--xla_cpu_max_isa=AVX2") == {
        "xla_cpu_enable_fast_math": False, "xla_cpu_max_isa": "AVX2"}
    with pytest.raises(ValueError, match="xla_cpu_enable_fast_math"):
        step_ab.parse_options("xla_cpu_enable_fast_math")


@pytest.mark.slow
def test_main_records_each_variant_every_round(capsys):
    record = step_ab.main(["base", "xla_cpu_enable_fast_math=false", "--rounds", "1", *TINY])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    variants = record["variants"]
    assert list(variants) == ["base", "xla_cpu_enable_fast_math=false"]
    assert variants["base"]["ratio_to_first"] == 1.0
    for result in variants.values():
        assert len(result["steps"]) == 1
        assert {"step_s_min", "step_s_median", "ratio_to_first"} <= set(result)


@pytest.mark.slow  # XLA refuses the option only when it compiles the step.
def test_an_unknown_option_is_refused():
    with pytest.raises(Exception, match="xla_cpu_no_such_option"):
        step_ab.main(["xla_cpu_no_such_option=1", "--rounds", "1", *TINY])
