"""Several processes: `jax.distributed` from the command line, and what processes share.

    nerve-jax train ... --coordinator HOST:PORT --num-processes N --process-id I
    nerve-jax train ... --distributed          (TPU pods, SLURM, Kubernetes, MPI: JAX detects)

Every process runs the same command; process 0 also hosts the coordinator at HOST:PORT. After
`initialize`, `jax.devices()` are the devices of all processes and the steps run over all of
them (parallel.py). On the CPU backend the collectives between processes go through gloo.

A process that dies is noticed by the others through JAX's heartbeats: they stop, non-zero,
within `--heartbeat-timeout` seconds, with JAX's message naming the task that stopped.
"""

import argparse
import dataclasses
import socket
import time

from nerve_jax.errors import UserError

DEFAULT_COORDINATOR_TIMEOUT = 300  # s, as jax.distributed.initialize's own default.
DEFAULT_HEARTBEAT_TIMEOUT = 100  # s, JAX's default.
# The key process 0 publishes when shared work is done: its value is "" or the error.
_DONE_KEY = "nerve_jax/{name}/{call}"
_calls = 0
# The key each process other than 0 publishes as it leaves (exit_now).
_LEAVING_KEY = "nerve_jax/leaving/{process}"


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the others (see `from_args`)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # --distributed: jax.distributed.initialize() detects the cluster.
    coordinator_timeout: int = DEFAULT_COORDINATOR_TIMEOUT
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT


def add_arguments(parser: argparse.ArgumentParser, host_only: bool = False) -> None:
    """The launch flags; `host_only` for a command that runs on process 0 alone (the others
    only exit), without jax.distributed, so without --distributed's detection."""
    group = parser.add_argument_group(
        "several processes", "run the same command in every process" + (
            "; process 0 does the work" if host_only else " (jax.distributed)"))
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, which listens on PORT")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in all")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    if host_only:
        parser.set_defaults(distributed=False)
    else:
        group.add_argument("--distributed", action="store_true",
                           help="let JAX detect the cluster (TPU pod, SLURM, Kubernetes, MPI)")
    group.add_argument("--coordinator-timeout", type=int, default=DEFAULT_COORDINATOR_TIMEOUT,
                       metavar="S", help="seconds to wait for the coordinator (default "
                                         "%(default)s)")
    group.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT,
                       metavar="S", help="seconds without news after which a process is taken "
                                         "for dead and all stop (default %(default)s)")


def from_args(args: argparse.Namespace) -> Launch | None:
    """The checked launch flags, or None for a single process; UserError naming the flag."""
    explicit = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
                "--process-id": args.process_id}
    given = [flag for flag, value in explicit.items() if value is not None]
    if args.distributed and given:
        raise UserError(f"--distributed detects the cluster itself: drop {', '.join(given)}")
    for flag in ("--coordinator-timeout", "--heartbeat-timeout"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            raise UserError(f"{flag}={value}: must be at least 1 second")
    timeouts = {"coordinator_timeout": args.coordinator_timeout,
                "heartbeat_timeout": args.heartbeat_timeout}
    if args.distributed:
        return Launch(auto=True, **timeouts)
    if not given:
        return None
    missing = [flag for flag, value in explicit.items() if value is None]
    if missing:
        raise UserError(f"{', '.join(given)} given without {', '.join(missing)}: several "
                        "processes need --coordinator HOST:PORT, --num-processes N and "
                        "--process-id I (or --distributed)")
    _host_port(args.coordinator)
    if args.num_processes < 1:
        raise UserError(f"--num-processes={args.num_processes}: must be at least 1")
    if not 0 <= args.process_id < args.num_processes:
        raise UserError(f"--process-id={args.process_id}: must be in 0..{args.num_processes - 1} "
                        f"for --num-processes={args.num_processes}")
    return Launch(args.coordinator, args.num_processes, args.process_id, **timeouts)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator={address!r}: expected HOST:PORT, e.g. 10.0.0.2:1234")
    return host.strip("[]"), int(port)


def initialize(launch: Launch, on_cpu: bool) -> None:
    """Joins the other processes (before any other JAX work). Waits at most
    launch.coordinator_timeout seconds for the coordinator, then UserError naming it."""
    import jax

    if on_cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = {"initialization_timeout": launch.coordinator_timeout,
                "heartbeat_timeout_seconds": launch.heartbeat_timeout}
    if launch.auto:
        jax.distributed.initialize(**timeouts)
        return
    if launch.process_id == 0:
        _check_port_free(launch.coordinator)
    else:
        _wait_for(launch.coordinator, launch.coordinator_timeout)
    jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id,
                               **timeouts)


def _check_port_free(address: str) -> None:
    """Process 0 listens on the coordinator's port, on every interface, as JAX does."""
    _, port = _host_port(address)
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            raise UserError(f"--coordinator={address}: process 0 cannot listen on port {port} "
                            f"({e.strerror}); choose a free port") from None


def _wait_for(address: str, timeout: float) -> None:
    """JAX aborts the process when the coordinator is unreachable; say so first, cleanly."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise UserError(
                f"--coordinator={address}: unreachable after {timeout:g} s ({reason}). Start "
                "process 0 (--process-id 0) on that host, or check the address and firewall")
        time.sleep(0.5)


def _client():
    from jax._src import distributed  # JAX's coordination client: key-value store, barriers.

    return distributed.global_state.client


def run_on_process_zero(name: str, fn, timeout: int = 24 * 3600):
    """Runs `fn()` on process 0 only; the other processes wait until it is done, and raise
    UserError with process 0's message if it failed. Returns fn's result on process 0, None
    on the others. One process: just fn()."""
    import jax

    if jax.process_count() == 1:
        return fn()
    global _calls
    _calls += 1  # Every process makes the same calls in the same order: the keys match.
    key, client = _DONE_KEY.format(name=name, call=_calls), _client()
    if jax.process_index() == 0:
        try:
            result = fn()
        except UserError as e:
            client.key_value_set(key, str(e) or type(e).__name__)
            raise
        except BaseException as e:
            client.key_value_set(key, f"{type(e).__name__}: {e}")
            raise
        client.key_value_set(key, "")
        return result
    error = client.blocking_key_value_get(key, timeout * 1000)
    if error:
        raise UserError(f"process 0 failed at {name}: {error}")
    return None


def process_zero_says(flag: bool) -> bool:
    """Process 0's `flag` on every process, so that all take the same branch."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(flag)))


# With several processes, the most training steps between two agreements (agreement_due).
AGREE_EVERY_STEPS = 50


def agreement_due(step: int, at_sync_point: bool) -> bool:
    """Whether the training loop agrees on the processes' own flags (a stop request, a timed
    checkpoint: any_process) at `step`. One process: at every step, as there is nothing to
    exchange. Several: only at sync points (log and evaluation steps, where every process waits
    for its devices anyway) and every AGREE_EVERY_STEPS steps, so that between them no host
    waits for the devices and steps are dispatched ahead. Every process takes the same steps,
    so a request is acted on by all at the same step, at most AGREE_EVERY_STEPS steps later."""
    import jax

    return jax.process_count() == 1 or at_sync_point or step % AGREE_EVERY_STEPS == 0


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any process: every process takes the same decision at the same step,
    with one collective for all the flags when there are several processes."""
    return tuple(bool(v) for v in _gathered(flags).any(axis=0))


def _gathered(flags):
    """[processes, len(flags)] bool array: every process's flags."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.array([flags], bool)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(flags, bool))
    return np.asarray(gathered).reshape(-1, len(flags))


def all_agree(ok: bool, message: str) -> None:
    """UserError on every process when `ok` is False on any; `message` is the failing
    processes' own, the others name the failing processes."""
    import numpy as np

    oks = _gathered((ok,))[:, 0]
    if not ok:
        raise UserError(message)
    if not oks.all():
        failing = [int(i) for i in np.nonzero(~oks)[0]]
        raise UserError(f"process(es) {failing} failed (see their output); all stop")


# What JAX's errors say when another process has gone (gloo's collectives notice first).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "unhealthy",
              "stopped sending heartbeats", "Gloo context initialization failed")


def lost_peer(error: BaseException) -> str | None:
    """A one-line explanation when `error` means another process stopped, else None."""
    text = str(error)
    if not any(sign in text for sign in _PEER_LOST):
        return None
    first = text.strip().splitlines()[0][:300]
    return (f"lost contact with another process ({first}); all processes stop: see the other "
            "processes' output for the cause")


def exit_now(code: int, grace: float = 30) -> None:
    """Ends a process of several at once. A normal exit would wait at JAX's shutdown barrier
    for processes that may be waiting for this one; gone, it is noticed by the others (within
    --heartbeat-timeout), which stop too. Process 0 hosts the coordinator, whose end the others
    see as a lost peer even while they are stopping for the same reason (a config error every
    process finds): it leaves last, once every other process has said it leaves, or after
    `grace` seconds."""
    import os
    import sys

    _say_leaving(grace)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _say_leaving(grace: float) -> None:
    from jax._src import distributed

    state, deadline = distributed.global_state, time.monotonic() + grace
    if state.client is None:
        return
    try:
        if state.process_id != 0:
            state.client.key_value_set(_LEAVING_KEY.format(process=state.process_id), "")
            return
        for process in range(1, state.num_processes):
            wait_ms = int(max(deadline - time.monotonic(), 0.001) * 1000)
            state.client.blocking_key_value_get(_LEAVING_KEY.format(process=process), wait_ms)
    except Exception:  # noqa: BLE001 - a process gone or the coordinator lost: leave anyway.
        pass
