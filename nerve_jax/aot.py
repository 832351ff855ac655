"""Ahead-of-time compilation: the train, evaluation and prediction programs of a config,
compiled by XLA for TPU slices (or a GPU) that are not attached, on a CPU-only machine.

    nerve-jax aot --config configs/tpu.py --topology v5e:1x1 [--config.FIELD=VALUE ...]
    nerve-jax aot --config configs/tpu.py --topology v5e:1x1 --largest-batch

The programs are the ones `train`, `evaluate` and `predict` run: step.parallel_train_step,
parallel_eval_step and parallel_predict_step over a 1-D 'batch' mesh of all the target's
devices, the state replicated and the global batch (config.batch_size, config.eval_batch_size)
split on 'batch', lowered with abstract inputs (jax.ShapeDtypeStruct) and compiled for the
target. The figures are XLA's own for one chip: memory_analysis(), cost_analysis() and the
collectives of the compiled HLO. Nothing runs: in a process whose JAX has not started, JAX starts
on the CPU (and stays there for the rest of the process).

The compiler of the target must be installed: libtpu for TPUs (`pip install -e '.[tpu]'`),
JAX's CUDA plugin for the GPU target (`pip install -e '.[cuda12]'`). On the GPU target XLA
compiles without a device, so it cannot time candidate convolution algorithms as it does on a
GPU: its temporaries may differ from a run's.
"""

import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nerve_jax import config_util, evaluation, parallel, step
from nerve_jax.data import kaggle
from nerve_jax.errors import UserError

GIB = 2**30

# XLA's description of an H100 SXM (80 GB HBM3) for compiling without one: the values an
# attached H100 reports (`jax.extend`'s target_config), as published in jax-ml/jax#28376 and
# openxla/xla#25919.
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


@dataclasses.dataclass(frozen=True)
class Target:
    """A machine to compile for: `topology` are get_topology_desc's keyword arguments."""

    name: str
    about: str
    platform: str  # "tpu" or "cuda"
    chips: int
    hosts: int
    memory_gib: float  # Per chip, the data sheet's (the runtime keeps a little of it).
    topology: dict
    accelerator_type: str = ""  # What libtpu is told it is (so it does not probe for one).

    @property
    def install(self) -> str:
        return "pip install -e '.[tpu]'" if self.platform == "tpu" else \
            "pip install -e '.[cuda12]'"


def _tpu(name: str, about: str, chips: int, hosts: int, memory_gib: float,
         per_host: tuple[int, int, int], accelerator_type: str, **extra) -> Target:
    topology = {"topology_name": name, "chips_per_host_bounds": per_host, **extra}
    return Target(name, about, "tpu", chips, hosts, memory_gib, topology, accelerator_type)


TARGETS = {t.name: t for t in (
    _tpu("v5e:1x1", "1 TPU v5e chip (Colab's TPU v5e-1, a v5litepod-1)", 1, 1, 16,
         (1, 1, 1), "v5litepod-1"),
    _tpu("v6e:1x1", "1 TPU v6e chip (Colab's TPU v6e-1, a v6e-1)", 1, 1, 32, (1, 1, 1), "v6e-1",
         chip_config_name="megachip_tccontrol"),  # As libtpu configures a live v6e host.
    _tpu("v5e:2x2", "4 TPU v5e chips on 1 host (v5litepod-4)", 4, 1, 16, (2, 2, 1),
         "v5litepod-4"),
    _tpu("v5e:2x4", "8 TPU v5e chips on 1 host (v5litepod-8)", 8, 1, 16, (2, 4, 1),
         "v5litepod-8"),
    _tpu("v4:2x2x1", "4 TPU v4 chips on 1 host (v4-8; JAX's one device per chip)", 4, 1, 32,
         (2, 2, 1), "v4-8", chip_config_name="megacore"),
    _tpu("v5e:4x4", "16 TPU v5e chips on 4 hosts of 4 (v5litepod-16)", 16, 4, 16, (2, 2, 1),
         "v5litepod-16"),
    Target("h100", "1 NVIDIA H100 80GB HBM3 GPU", "cuda", 1, 1, 84929347584 / GIB,
           {"target_config": H100_TARGET_CONFIG, "topology": "1x1x1"}),
)}

PROGRAMS = ("train", "eval", "predict")
DEFAULT_HEADROOM = 0.10  # --largest-batch: the share of a chip's memory left free.


def target(name: str) -> Target:
    """The known target `name`, else UserError listing the known ones."""
    if name not in TARGETS:
        raise UserError(f"--topology={name}: unknown; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def compiler_installed(platform: str) -> bool:
    """Whether XLA's compiler for `platform` ("tpu": libtpu, "cuda": JAX's CUDA plugin) can be
    loaded, found without loading it."""
    if platform == "tpu":
        return (importlib.util.find_spec("libtpu") is not None
                or os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")))
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:
        return False


def compiler_version(platform: str) -> str:
    package = "libtpu" if platform == "tpu" else "jax-cuda12-plugin"
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def check_compiler(t: Target) -> None:
    """UserError naming the install when the target's compiler is missing."""
    if not compiler_installed(t.platform):
        what = "libtpu, XLA's TPU compiler" if t.platform == "tpu" else "JAX's CUDA plugin"
        raise UserError(f"--topology={t.name} needs {what}, which is not installed: "
                        f"{t.install}")


def _prepare_libtpu(t: Target, environ=os.environ) -> None:
    """What libtpu reads when it loads, unless set: not to ask the (absent) TPU metadata server
    nor warn about TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES, and not to take the host's
    libtpu lock (/tmp/libtpu_lockfile), which any JAX process with libtpu installed may hold
    (and a TPU host's training does): compiling needs no chip."""
    environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    environ.setdefault("TPU_ACCELERATOR_TYPE", t.accelerator_type)
    environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _cpu_backend() -> None:
    """Nothing runs, so JAX's own backend is the CPU: a TPU host's chips stay free for the
    training there, and JAX's CUDA plugin registers its compile-only topology on a machine
    without a GPU. Left alone where JAX_PLATFORMS is set or JAX's backends have started."""
    from jax._src import xla_bridge

    if jax.config.jax_platforms is None and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


@functools.cache
def devices(name: str) -> tuple:
    """The compile-only devices of target `name` (checked, compiler loaded once per process)."""
    t = target(name)
    check_compiler(t)
    _cpu_backend()
    if t.platform == "tpu":
        _prepare_libtpu(t)
    from jax.experimental import topologies

    found = tuple(topologies.get_topology_desc(platform=t.platform, **t.topology).devices)
    if len(found) != t.chips:
        raise RuntimeError(f"{t.name}: XLA describes {len(found)} devices, expected {t.chips}")
    return found


@dataclasses.dataclass(frozen=True)
class Collective:
    """Collectives of one kind from one source line of the compiled program."""

    op: str  # all-reduce, all-gather, reduce-scatter, collective-permute, all-to-all
    count: int
    bytes: int  # Their results' bytes, all together.
    where: str  # The source line that emitted them (e.g. "psum at nerve_jax/step.py:159").


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program, per chip (bytes), as XLA reports it."""

    name: str  # train, eval or predict
    global_batch: int
    per_chip_batch: int
    fits: bool  # Compiled, and `total` within the chip's memory.
    inputs: int = 0  # The state and this chip's batch, as XLA lays them out (tiles padded).
    donated: int = 0  # Inputs the outputs are written over: the train step's state.
    temporaries: int = 0
    code: int = 0
    outputs: int = 0  # Outputs not written over donated inputs.
    peak: int = 0  # XLA's own peak estimate (0: not given).
    flops: float | None = None  # Per chip and step.
    flops_source: str = ""
    optimal_seconds: float | None = None  # XLA's cost model; None unless positive.
    collectives: tuple[Collective, ...] = ()
    error: str = ""  # XLA's message when the program does not fit (it refuses to compile).

    @property
    def total(self) -> int:
        return self.inputs + self.temporaries + self.code + self.outputs

    @property
    def batch(self) -> int:
        """This chip's batch, where the state is donated (train); else the inputs."""
        return self.inputs - self.donated


@dataclasses.dataclass(frozen=True)
class Report:
    target: Target
    compiler: str
    config: ml_collections.FrozenConfigDict
    programs: tuple[Program, ...]


def abstract_batch(kind: str, config, global_batch: int, mesh) -> dict:
    """The global batch program `kind` reads (pipeline.py's train, eval and test batches),
    abstract and split on 'batch' as parallel.prefetch_to_device places it."""
    h, w = config.image_size
    b = global_batch
    image = ((b, h, w, 1), jnp.float32)
    fields = {
        "train": {"image": image, "mask": image},
        "eval": {"image": image, "mask_full": ((b, kaggle.HEIGHT, kaggle.WIDTH), jnp.bool_),
                 "subject": ((b,), jnp.int32), "frame": ((b,), jnp.int32),
                 "valid": ((b,), jnp.bool_)},
        "predict": {"image": image, "id": ((b,), jnp.int32), "valid": ((b,), jnp.bool_)},
    }[kind]
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in fields.items()}


def _parallel_step(kind: str, config, mesh) -> tuple[Callable, int]:
    """(the step `kind` as train, evaluate and predict build it, its global batch)."""
    if kind == "train":
        return step.parallel_train_step(config, mesh), config.batch_size
    tta = evaluation.resolve_tta(config)
    if kind == "eval":
        return step.parallel_eval_step(config, mesh, tta), config.eval_batch_size
    return step.parallel_predict_step(config, mesh, tta), config.eval_batch_size


def checked_config(config: ml_collections.ConfigDict, t: Target):
    """The config checked as train checks it, for the target's devices and hosts."""
    if config.parallel != "shard_map":
        raise UserError(f"config.parallel={config.parallel!r}: nerve-jax aot compiles the "
                        "shard_map programs (the same per-device step); pass "
                        "--config.parallel=shard_map")
    return config_util.checked(config, devices=t.chips, processes=t.hosts)


def compile_program(kind: str, config, name: str, global_batch: int | None = None) -> Program:
    """Program `kind` of a checked `config` compiled for target `name`; `global_batch`
    replaces the config's batch of that program. A program XLA refuses for want of memory
    comes back with fits=False and XLA's message."""
    t = target(name)
    mesh = parallel.make_mesh(list(devices(name)))
    fn, batch_size = _parallel_step(kind, config, mesh)
    batch_size = global_batch or batch_size
    batch = abstract_batch(kind, config, batch_size, mesh)
    lowered = fn.lower(step.abstract_train_state(config, mesh), batch)
    per_chip = batch_size // t.chips
    try:
        compiled = lowered.compile()
    except Exception as e:  # XLA's runtime error type differs between jaxlib versions.
        if not _out_of_memory(e):
            raise
        return Program(kind, batch_size, per_chip, False, error=_first_line(e))
    return _measure(kind, compiled, lowered, t, batch_size)


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:400]


def _measure(kind, compiled, lowered, t: Target, batch_size: int) -> Program:
    memory = compiled.memory_analysis()
    flops, source = _flops(compiled, lowered)
    seconds = _cost(compiled).get("optimal_seconds")
    program = Program(
        kind, batch_size, batch_size // t.chips, True, inputs=memory.argument_size_in_bytes,
        donated=memory.alias_size_in_bytes, temporaries=memory.temp_size_in_bytes,
        code=memory.generated_code_size_in_bytes,
        outputs=memory.output_size_in_bytes - memory.alias_size_in_bytes,
        peak=getattr(memory, "peak_memory_in_bytes", 0) or 0, flops=flops,
        flops_source=source,
        optimal_seconds=seconds if seconds is not None and seconds > 0 else None,
        collectives=tuple(collectives(compiled.as_text() or "")))
    return dataclasses.replace(program, fits=program.total <= t.memory_gib * GIB)


def _cost(stage) -> dict:
    cost = stage.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    return dict(cost or {})


def _flops(compiled, lowered) -> tuple[float | None, str]:
    """XLA's FLOP count of one chip's step: of the compiled program where the backend gives
    it (TPU), else of the program before XLA's optimisations; None where neither is given (the
    GPU target, compiled without a device)."""
    for stage, source in ((compiled, "compiled program"), (lowered, "program before XLA's "
                                                           "optimisations")):
        flops = _cost(stage).get("flops")
        if flops:
            return float(flops), source
    return None, ""


def compile_config(config: ml_collections.ConfigDict, name: str,
                   programs: Sequence[str] = PROGRAMS) -> Report:
    """`programs` of `config` compiled for target `name` (UserError for an unknown target,
    a missing compiler or a config that train would refuse on that many chips and hosts)."""
    t = target(name)
    check_compiler(t)
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise UserError(f"--programs: {unknown} unknown; choose from {PROGRAMS}")
    devices(name)  # Before the config's checks start JAX's backends.
    config = checked_config(config, t)
    compiled = tuple(compile_program(kind, config, name) for kind in programs)
    return Report(t, compiler_version(t.platform), config, compiled)


@dataclasses.dataclass(frozen=True)
class Search:
    """--largest-batch: every train program compiled (by global batch) and the largest that
    fits within (1 - headroom) of a chip's memory (None: not even one image per chip)."""

    target: Target
    headroom: float
    probes: tuple[Program, ...]
    largest: Program | None

    @property
    def limit(self) -> float:
        return (1 - self.headroom) * self.target.memory_gib * GIB


def largest_batch(config: ml_collections.ConfigDict, name: str,
                  headroom: float = DEFAULT_HEADROOM,
                  on_probe: Callable[[Program, bool], None] | None = None) -> Search:
    """The largest global batch (a multiple of the chips) whose train step fits a chip's memory
    with `headroom` left: doubling (or halving) from config.batch_size to bracket it, then
    bisection over multiples of the chips, each probe where a line through the figures found
    meets the limit (memory grows about linearly with the batch, _interpolate), or at the
    middle after two probes on one side. Memory need not grow monotonically near the limit
    (XLA rematerialises), so this is the largest batch found under it. `on_probe(program,
    fits)` hears of every compile."""
    t = target(name)
    check_compiler(t)
    if not 0 <= headroom < 1:
        raise UserError(f"--headroom={headroom}: must be in [0, 1)")
    devices(name)  # Before the config's checks start JAX's backends.
    config = checked_config(config, t)
    limit = (1 - headroom) * t.memory_gib * GIB
    probes: dict[int, Program] = {}

    def fits(batch: int) -> bool:
        if batch not in probes:
            probes[batch] = compile_program("train", config, name, batch)
            if on_probe:
                on_probe(probes[batch], _within(probes[batch], limit))
        return _within(probes[batch], limit)

    n = t.chips
    lo, hi = _bracket(fits, n, max(n, config.batch_size // n * n))
    sides = []  # Whether each probe inside the bracket fitted.
    while lo is not None and hi - lo > n:
        # Two probes on the same side: the line misleads there (XLA rematerialises near the
        # limit, so memory bends), so the next probe halves the bracket.
        if len(sides) >= 2 and sides[-1] == sides[-2]:
            guess = min(max((lo + hi) // 2 // n * n, lo + n), hi - n)
        else:
            guess = _interpolate(probes, lo, hi, limit, n)
        sides.append(fits(guess))
        lo, hi = (guess, hi) if sides[-1] else (lo, guess)
    ordered = tuple(probes[b] for b in sorted(probes))
    return Search(t, headroom, ordered, probes[lo] if lo is not None else None)


MAX_PER_CHIP = 1 << 14  # Doubling stops here.


def _bracket(fits: Callable[[int], bool], n: int, start: int) -> tuple[int | None, int]:
    """(a batch that fits or None, the smallest batch known not to)."""
    if fits(start):
        lo = start
        while lo * 2 <= MAX_PER_CHIP * n:
            if not fits(lo * 2):
                return lo, lo * 2
            lo *= 2
        return lo, lo + n  # Fits up to the cap: stop there.
    hi = start
    while hi > n:
        lower = max(n, hi // 2 // n * n)
        if fits(lower):
            return lower, hi
        hi = lower
    return None, hi


def _within(program: Program, limit: float) -> bool:
    return program.fits and program.total <= limit


def _interpolate(probes: dict, lo: int, hi: int, limit: float, n: int) -> int:
    """A multiple of n strictly between lo and hi where a line meets `limit` (at least lo + n):
    the line through the two largest compiled probes up to lo (memory is about linear there),
    else through lo and the smallest compiled probe from hi; the midpoint when neither meets
    it below hi."""
    known = sorted((b, p.total) for b, p in probes.items() if not p.error)
    below = [point for point in known if point[0] <= lo]
    above = [point for point in known if point[0] >= hi]
    pairs = [tuple(below[-2:])] + ([((lo, probes[lo].total), above[0])] if above else [])
    for pair in pairs:
        if len(pair) == 2 and pair[1][1] > pair[0][1]:
            (x0, y0), (x1, y1) = pair
            guess = max(int(x0 + (limit - y0) * (x1 - x0) / (y1 - y0)) // n * n, lo + n)
            if guess < hi:
                return guess
    return min(max((lo + hi) // 2 // n * n, lo + n), hi - n)


# --- Collectives of the compiled program ----------------------------------------------------

_COLLECTIVE = re.compile(
    r"=\s(?P<shape>.+?)\s(?P<op>all-reduce|all-gather|reduce-scatter|collective-permute|"
    r"all-to-all|ragged-all-to-all|collective-broadcast)(?P<async>-start|-done)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = _BITS.get(dtype) or (8 if dtype.startswith("f8") else int(dtype[1:]))
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * bits // 8
    return total


def collectives(hlo: str) -> list[Collective]:
    """The collectives of compiled HLO text, grouped by kind and by the source line that
    emitted them (an async pair counts once, by its -done, whose result is the output)."""
    sources = _SourceIndex(hlo)
    groups: dict[tuple[str, str], list[int]] = {}
    for line in hlo.splitlines():
        found = _COLLECTIVE.search(line)
        if not found or found["async"] == "-start":
            continue
        key = (found["op"], sources.where(line))
        groups.setdefault(key, []).append(_shape_bytes(found["shape"]))
    return [Collective(op, len(sizes), sum(sizes), where)
            for (op, where), sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1]))]


class _SourceIndex:
    """Source lines of HLO instructions: `source_file`/`source_line` in their metadata, or
    (TPU) a `stack_frame_id` into the module's FileNames/FunctionNames/FileLocations/
    StackFrames tables."""

    def __init__(self, hlo: str):
        tables, current = {}, None
        for line in hlo.splitlines():
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                current = tables.setdefault(line, {})
            elif current is not None and (m := re.match(r"(\d+) (.*)", line)):
                current[m[1]] = m[2]
            else:
                current = None
        self.tables = tables

    def where(self, line: str) -> str:
        op = re.search(r'op_name="([^"]*)"', line)
        name = op[1].rsplit("/", 1)[-1] if op else "?"
        if m := re.search(r'source_file="([^"]*)" source_line=(\d+)', line):
            return f"{name} at {_short_path(m[1])}:{m[2]}"
        if m := re.search(r"stack_frame_id=(\d+)", line):
            return f"{name} at {self._frame(m[1])}"
        return name

    def _frame(self, frame_id: str) -> str:
        frame = self.tables.get("StackFrames", {}).get(frame_id, "")
        location = re.search(r"file_location_id=(\d+)", frame)
        text = self.tables.get("FileLocations", {}).get(location[1] if location else "", "")
        fields = dict(re.findall(r"(\w+)=(\d+)", text))
        path = self.tables.get("FileNames", {}).get(fields.get("file_name_id", ""), "?")
        function = self.tables.get("FunctionNames", {}).get(fields.get("function_name_id", ""),
                                                            "")
        where = f"{_short_path(path.strip(chr(34)))}:{fields.get('line', '?')}"
        return f"{where} {function.strip(chr(34))}".strip()


def _short_path(path: str) -> str:
    for anchor in ("site-packages/", "dist-packages/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    return path[path.index("nerve_jax/"):] if "nerve_jax/" in path else path


# --- The report's lines ---------------------------------------------------------------------

def _gib(n: float) -> str:
    return f"{n / GIB:.3f} GiB"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def report_lines(report: Report) -> list[str]:
    t, config = report.target, report.config
    h, w = config.image_size
    lines = [f"{t.name}: {t.about}; {t.memory_gib:.4g} GiB per chip",
             f"compiled by XLA ({report.compiler}, jax {jax.__version__}) for "
             f"{t.chips} chip(s) on {t.hosts} host(s); model dtype {config.model.dtype}, "
             f"images {h}x{w}"]
    for program in report.programs:
        lines += program_lines(program, t)
    return lines


def program_lines(p: Program, t: Target) -> list[str]:
    """One program's figures per chip, against the chip's memory."""
    head = f"{p.name} step: global batch {p.global_batch}, {p.per_chip_batch} per chip"
    if not p.fits and p.error:
        return [head, f"  does not fit: XLA refuses it: {p.error}"]
    memory = t.memory_gib * GIB
    free = memory - p.total
    inputs = (f"state (parameters, optimizer, BatchNorm; donated) {_gib(p.donated)} + batch "
              f"{_gib(p.batch)}" if p.donated else f"inputs (state and batch) {_gib(p.inputs)}")
    lines = [head,
             f"  per chip: {inputs} + temporaries {_gib(p.temporaries)} + code {_gib(p.code)} + "
             f"outputs {_gib(p.outputs)}",
             f"  total {_gib(p.total)} of {t.memory_gib:.4g} GiB: "
             + (f"headroom {_gib(free)} ({free / memory:.0%})" if free >= 0 else
                f"{_gib(-free)} OVER")
             + (f"; XLA's peak estimate {_gib(p.peak)}" if p.peak else "")]
    if not p.flops:
        lines.append("  FLOPs: not given (XLA gives no cost analysis for this target's program)")
    else:
        chips = t.chips
        lines.append(f"  FLOPs (XLA's count, {p.flops_source}): {p.flops / 1e12:.3f} T per chip "
                     f"and step, {p.flops * chips / 1e12:.3f} T per step, "
                     f"{p.flops * chips / p.global_batch / 1e9:.2f} G per image")
    if p.optimal_seconds:
        lines.append(f"  XLA's cost model: {1e3 * p.optimal_seconds:.3f} ms per step (its "
                     "estimate, not a measurement)")
    elif t.platform == "tpu":
        lines.append("  XLA's cost model: no time (its optimal_seconds is not positive for "
                     "this program)")
    if p.name == "train" or p.collectives:
        lines += _collective_lines(p.collectives, t)
    return lines


def _collective_lines(found: Sequence[Collective], t: Target) -> list[str]:
    if not found:
        return [f"  collectives: none{' (one chip)' if t.chips == 1 else ''}"]
    count, size = sum(c.count for c in found), sum(c.bytes for c in found)
    lines = [f"  collectives: {count}, {_bytes(size)} per chip and step"]
    lines += [f"    {c.count:3d} x {c.op:<18} {_bytes(c.bytes):>10}  {c.where}" for c in found]
    return lines


def search_lines(search: Search) -> list[str]:
    t = search.target
    limit = f"{search.limit / GIB:.2f} GiB"
    if search.largest is None:
        return [f"largest batch: none; not even {t.chips} image(s) per chip fits {limit}"]
    best = search.largest
    return [f"largest global train batch on {t.name} within {limit} per chip "
            f"({search.headroom:.0%} of {t.memory_gib:.4g} GiB left free): {best.global_batch} "
            f"({best.per_chip_batch} per chip, {_gib(best.total)})"]


def probe_line(program: Program, fits: bool) -> str:
    figure = _gib(program.total) if program.fits or not program.error else "XLA refuses it"
    return (f"  batch {program.global_batch} ({program.per_chip_batch} per chip): {figure} "
            f"{'fits' if fits else 'does not fit'}")
