"""One prepared check of an accelerator (a GPU, or the TPU chips of a host), at most ~8 minutes.

  python benchmarks/device_check.py [--out DIR] [--budget-s 470]
  python benchmarks/device_check.py --smoke      # tiny sizes on the CPU: the test suite runs it

Needs nerve-jax installed for the device (`pip install -e '.[cuda12]'` or `'.[tpu]'`). Stages,
each printed as it ends and all in DIR/device_check.json:
1. train: images/s and MFU (model FLOPs from XLA's cost analysis / time / the device's dense
   peak) of the train step of configs/gpu.py's model at 128x176, bfloat16 and float32, global
   batch 64, 128, 256, on device-resident batches (compute only); next to each, XLA's
   memory_analysis() of the program it ran and the device's measured peak (memory_stats(),
   where the row raised it), and for bfloat16 at 128 the `nerve-jax aot` figure of the same
   program compiled without the device (h100, v5e:1x1, ...), so that the compile-only figures
   in docs/distributed.md meet a measurement;
2. inference: full-resolution (420x580) prediction images/s, bfloat16, batch 256;
3. input: the share of a training step the host spends on input (tf.data `next` plus the
   host-to-device copy) against the step's compute, without and with device prefetch, on
   the real pipeline at batch 128;
4. quickstart: `scripts/quickstart.sh`'s commands on the GPU, each timed (in this process,
   so without the seconds a command spends starting Python, JAX and TensorFlow);
5. kaggle: the whole pipeline at Kaggle size on a synthetic download (benchmarks/build_speed.py's:
   47 subjects x 120 frames, 5,508 test images): build, train fold 0 with configs/gpu.py, tune,
   predict, each timed, more folds while the budget lasts, and the projected 5-fold total
   (build + 5 trainings + tune + a 5-model predict; predict checks its submission).
A stage that would not fit in what is left of --budget-s is skipped and says so.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dense peak FLOP/s per device (bf16; float32 on GPUs as TF32, which XLA uses for float32
# convolutions by default; TPUs run float32 matmuls as bf16 passes): vendors' data sheets.
PEAKS = {  # device_kind substring: (bf16, float32)
    "H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
    "L4": (121e12, 60e12), "TPU v6": (918e12, 918e12), "TPU v5 lite": (197e12, 197e12),
    "TPU v5": (459e12, 459e12), "TPU v4": (275e12, 275e12), "TPU v3": (61.5e12, 61.5e12),
    "TPU v2": (22.5e12, 22.5e12),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    image_size: tuple[int, int] = (128, 176)
    batches: tuple[int, ...] = (64, 128, 256)
    steps: int = 30
    infer_batch: int = 256
    input_batch: int = 128
    model: tuple[str, ...] = ()  # Config overrides for the model (smoke: a tiny one).
    quickstart: tuple[int, int, int] = (24, 20, 60)  # subjects, frames, test images.
    kaggle: tuple[int, int, int] = (47, 120, 5508)
    folds: int = 5
    train_overrides: tuple[str, ...] = ()


SMOKE = Plan(image_size=(32, 48), batches=(8,), steps=3, folds=1, infer_batch=8, input_batch=8,
             model=("--config.model.depth=2", "--config.model.base_features=4"),
             quickstart=(4, 6, 4), kaggle=(4, 6, 4),
             train_overrides=("--config.num_train_steps=4", "--config.eval_every_steps=2",
                              "--config.batch_size=8", "--config.eval_batch_size=8",
                              "--config.image_size=32,48", "--config.model.depth=2",
                              "--config.model.base_features=4", "--config.num_folds=2"))


def peak_flops(dtype: str) -> float | None:
    import jax

    kind = jax.devices()[0].device_kind
    for name, (bf16, f32) in PEAKS.items():
        if name in kind:
            return (bf16 if dtype == "bfloat16" else f32) * jax.device_count()
    return None


def _config(plan: Plan, dtype: str, batch: int):
    from nerve_jax import config_util

    config = config_util.load_config_file(os.path.join(REPO, "configs", "gpu.py"))
    config_util.apply_overrides(config, [*plan.model, f"--config.model.dtype={dtype}"])
    config.image_size, config.batch_size, config.eval_batch_size = plan.image_size, batch, batch
    return config


def _random_batch(config, batch: int, mesh):
    import numpy as np

    from nerve_jax import parallel

    rng = np.random.default_rng(0)
    h, w = config.image_size
    images = rng.random((batch, h, w, 1), np.float32)
    local = {"image": images, "mask": (images > 0.8).astype(np.float32)}
    return parallel.global_batch(local, mesh)


def stage_train(plan: Plan) -> list[dict]:
    import jax

    from nerve_jax import parallel, step

    mesh, rows = parallel.make_mesh(), []
    # bfloat16 first: rows in about increasing memory, so that most raise the measured peak.
    for dtype in ("bfloat16", "float32"):
        for batch in plan.batches:
            config = _config(plan, dtype, batch)
            state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
            data = _random_batch(config, batch, mesh)
            flops = _step_flops(config, batch)
            peak_before = _peak_bytes()
            compiled = step.parallel_train_step(config, mesh).lower(state, data).compile()
            state, m = compiled(state, data)
            jax.block_until_ready(m)
            start = time.perf_counter()
            for _ in range(plan.steps):
                state, m = compiled(state, data)
            jax.block_until_ready((state, m))
            seconds = (time.perf_counter() - start) / plan.steps
            peak = peak_flops(dtype)
            rows.append({"dtype": dtype, "batch": batch, "step_ms": 1e3 * seconds,
                         "images_per_s": batch / seconds, "tflops_per_s": flops / seconds / 1e12,
                         "mfu": flops / seconds / peak if peak else None,
                         **_memory_figures(compiled, peak_before)})
            if dtype == "bfloat16" and batch == plan.batches[len(plan.batches) // 2]:
                rows[-1]["aot"] = _aot_figures(config, batch)
            _say("train", rows[-1])
    return rows


def _peak_bytes() -> int | None:
    """The device's peak bytes in use so far (None on the CPU, which does not count them)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _memory_figures(compiled, peak_before: int | None) -> dict:
    """XLA's memory_analysis() of the program that ran, per device, in GiB, and the measured
    peak where this row raised it (None: below an earlier row's peak, or no figure)."""
    gib = 2**30
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes
             + memory.generated_code_size_in_bytes)
    peak = _peak_bytes()
    raised = peak is not None and (peak_before is None or peak > peak_before)
    return {"xla_temp_gib": memory.temp_size_in_bytes / gib, "xla_total_gib": total / gib,
            "measured_peak_gib": peak / gib if raised else None}


# device_kind substring and device count -> the `nerve-jax aot` target of the same machine.
AOT_TARGETS = (("H100", 1, "h100"), ("H200", 1, "h100"), ("TPU v5 lite", 1, "v5e:1x1"),
               ("TPU v5 lite", 4, "v5e:2x2"), ("TPU v5 lite", 8, "v5e:2x4"),
               ("TPU v6 lite", 1, "v6e:1x1"), ("TPU v4", 4, "v4:2x2x1"))


def _aot_figures(config, batch: int) -> dict:
    """The same train program compiled by `nerve-jax aot` for this machine's target, without
    using the device: {"target", "temp_gib", "total_gib"}, or {"skipped": why}."""
    import jax

    from nerve_jax import aot

    kind, count = jax.devices()[0].device_kind, jax.device_count()
    name = next((t for k, n, t in AOT_TARGETS if k in kind and n == count), None)
    if name is None:
        return {"skipped": f"no aot target for {count} x {kind}"}
    try:
        checked = aot.checked_config(config, aot.target(name))
        program = aot.compile_program("train", checked, name, batch)
    except Exception as e:  # A compile-only failure must not end the device check.
        return {"target": name, "skipped": f"{type(e).__name__}: {str(e)[:300]}"}
    gib = 2**30
    return {"target": name, "temp_gib": program.temporaries / gib,
            "total_gib": program.total / gib}


def _step_flops(config, batch: int) -> float:
    """FLOPs of one global train step, from XLA's cost analysis of the one-device step."""
    import jax
    import jax.numpy as jnp

    from nerve_jax import step

    state = jax.eval_shape(lambda: step.create_train_state(config, jax.random.key(0),
                                                           axis_name=None))
    h, w = config.image_size
    spec = jax.ShapeDtypeStruct((batch, h, w, 1), jnp.float32)
    fn = jax.jit(step.per_device_train_step(config, axis_name=None))
    cost = fn.lower(state, {"image": spec, "mask": spec}).cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def stage_inference(plan: Plan) -> dict:
    import jax
    import numpy as np

    from nerve_jax import parallel, step

    mesh = parallel.make_mesh()
    config = _config(plan, "bfloat16", plan.infer_batch)
    state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
    predict = parallel.parallelize(lambda s, b: step.predict_step(s, b)["probs"],
                                   "shard_map", mesh, out_batched=True)
    h, w = config.image_size
    images = np.random.default_rng(0).random((plan.infer_batch, h, w, 1), np.float32)
    jax.block_until_ready(predict(state, {"image": images}))
    start = time.perf_counter()
    for _ in range(plan.steps):
        out = predict(state, {"image": images})
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / plan.steps
    row = {"dtype": "bfloat16", "batch": plan.infer_batch, "output": "420x580 probabilities",
           "images_per_s": plan.infer_batch / seconds}
    _say("inference", row)
    return row


def stage_input(plan: Plan, data: str, tfds_dir: str) -> list[dict]:
    """Per step: host time in `next` and the device copy, against the step's compute."""
    import jax

    from nerve_jax import parallel, step
    from nerve_jax.data import pipeline, tfds_builder

    builder = tfds_builder.prepare(data, tfds_dir, progress=False)
    subjects = sorted(pipeline.frames_per_subject(builder))
    config = _config(plan, "bfloat16", plan.input_batch)
    mesh = parallel.make_mesh()
    train_fn = step.parallel_train_step(config, mesh)
    rows = []
    for prefetch in (False, True):
        state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
        batches = pipeline.train_batches(builder, subjects, config.image_size,
                                         config.batch_size, config.seed)
        if prefetch:
            batches = parallel.prefetch_to_device(batches, "shard_map", mesh)
        state, m = train_fn(state, parallel.global_batch(next(batches), mesh))
        jax.block_until_ready(m)
        host, started = 0.0, time.perf_counter()
        for _ in range(plan.steps):
            start = time.perf_counter()
            batch = parallel.global_batch(next(batches), mesh)
            host += time.perf_counter() - start
            state, m = train_fn(state, batch)
        jax.block_until_ready((state, m))
        total = time.perf_counter() - started
        rows.append({"prefetch": prefetch, "batch": plan.input_batch,
                     "step_ms": 1e3 * total / plan.steps, "host_input_ms": 1e3 * host / plan.steps,
                     "host_input_share": host / total})
        _say("input", rows[-1])
    return rows


def _cli(*args: str) -> float:
    """Runs `nerve-jax ARGS` in this process; its wall-clock seconds. Not in a child process:
    this one's JAX holds the device (most of a GPU's memory, preallocated)."""
    from nerve_jax import cli

    start = time.perf_counter()
    if cli.main(list(args)) != 0:
        raise RuntimeError(f"nerve-jax {' '.join(args)} failed")
    return time.perf_counter() - start


def _synth(folder: str, sizes: tuple[int, int, int]) -> float:
    if os.path.exists(os.path.join(folder, "train_masks.csv")):
        return 0.0
    subjects, frames, test = sizes
    return _cli("synth", "--out", folder, "--subjects", str(subjects), "--frames", str(frames),
                "--test", str(test))


def stage_quickstart(plan: Plan, root: str) -> dict:
    data, work, tfds = (os.path.join(root, "quickstart", p) for p in ("data", "work", "tfds"))
    times = {"synth_s": _synth(data, plan.quickstart)}
    times["train_s"] = _cli("train", "--config", os.path.join(REPO, "configs", "quickstart.py"),
                            "--workdir", work, f"--config.kaggle_dir={data}",
                            f"--config.tfds_data_dir={tfds}",
                            *plan.train_overrides)
    times["evaluate_s"] = _cli("evaluate", "--workdir", work)
    times["tune_s"] = _cli("tune", "--workdir", work, "--quiet")
    times["predict_s"] = _cli("predict", "--workdir", work, "--out",
                              os.path.join(work, "submission.csv"))
    with open(os.path.join(work, "eval.json")) as f:
        times["val_dice"] = json.load(f)["val_dice"]
    _say("quickstart", times)
    return times


def stage_kaggle(plan: Plan, root: str, deadline: float) -> dict:
    data, tfds = os.path.join(root, "kaggle", "data"), os.path.join(root, "kaggle", "tfds")
    result = {"synth_s": _synth(data, plan.kaggle)}
    result["build_s"] = _cli("build", "--kaggle-dir", data, "--tfds-data-dir", tfds)
    folds, train_s = [], []
    for fold in range(plan.folds):
        if fold and time.monotonic() + max(train_s) + 60 > deadline:
            break
        work = os.path.join(root, "kaggle", f"fold{fold}")
        train_s.append(_cli("train", "--config", os.path.join(REPO, "configs", "gpu.py"),
                            "--workdir", work, f"--config.kaggle_dir={data}",
                            f"--config.tfds_data_dir={tfds}",
                            f"--config.fold={fold}", *plan.train_overrides))
        folds.append(work)
    tune_args = [a for w in folds for a in ("--workdir", w)]
    result["tune_s"] = _cli("tune", *tune_args, "--quiet")
    out = os.path.join(root, "kaggle", "submission.csv")
    result["predict_s"] = _cli("predict", *tune_args, "--out", out)
    result.update(folds_trained=len(folds), train_s=train_s)
    per_model_predict = result["predict_s"] / len(folds)
    result[f"projected_{plan.folds}_fold_s"] = (
        result["build_s"] + plan.folds * common.median(train_s) + result["tune_s"]
        + plan.folds * per_model_predict)
    _say("kaggle", result)
    return result


def _say(stage: str, record: dict) -> None:
    print(f"[{stage}] " + "  ".join(f"{k}={_short(v)}" for k, v in record.items()), flush=True)


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the CPU test suite")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "device_check"))
    p.add_argument("--budget-s", type=float, default=470.0)
    args = p.parse_args(argv)
    plan = SMOKE if args.smoke else Plan()
    deadline = time.monotonic() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    from nerve_jax import runtime

    runtime.configure()  # Before JAX starts: the commands of stages 4 and 5 run in this process.
    runtime.start_tensorflow()
    import jax

    report = {"date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind,
              "devices": jax.device_count(), "jax": jax.__version__, "smoke": args.smoke}
    _say("device", report)
    with tempfile.TemporaryDirectory() as root:
        stages = [("train", lambda: stage_train(plan), 90),
                  ("inference", lambda: stage_inference(plan), 20),
                  ("quickstart", lambda: stage_quickstart(plan, root), 90),
                  ("input", lambda: stage_input(plan, os.path.join(root, "quickstart", "data"),
                                                os.path.join(root, "quickstart", "tfds")), 30),
                  ("kaggle", lambda: stage_kaggle(plan, root, deadline), 150)]
        for name, run, needs_s in stages:
            if time.monotonic() + (0 if args.smoke else needs_s) > deadline:
                report[name] = f"skipped: less than {needs_s} s of the budget left"
                print(f"[{name}] {report[name]}", flush=True)
                continue
            report[name] = run()
            with open(os.path.join(args.out, "device_check.json"), "w") as f:
                json.dump(report, f, indent=2)
    common.print_json(report)


if __name__ == "__main__":
    common.run_main(main)
