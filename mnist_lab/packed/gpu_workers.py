"""A packed sweep's units spread over the GPUs of one machine (``hydra.launcher.gpus``): one
worker process per GPU, started with ``CUDA_VISIBLE_DEVICES`` set to that GPU alone (so every
job in it sees its GPU as ``cuda:0``), each taking the next unit from one shared queue when it
is free. A queue rather than a fixed placement: units differ in size (a pack of 16 jobs, a job
alone), and a free GPU taking the next one keeps every GPU busy until the queue is empty.

The pool is ``concurrent.futures.ProcessPoolExecutor`` (spawned processes: a forked one would
inherit this process's CUDA state), whose initializer gives each worker its GPU; what is written
here is only that initializer. The launch (task function, Hydra context and state) reaches the
workers pickled by cloudpickle, as submitit and Ray send theirs: the task function is the
``__main__`` module's, which the standard pickle cannot send by name."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
import torch
from hydra.core.utils import JobReturn

from mnist_lab.cli.exit_codes import raise_terminated
from mnist_lab.packed.units import Launch, Unit, run_unit_remote

READY_TIMEOUT_S = 600  # how long a started worker waits for the others before taking units anyway

_worker: tuple = ()  # in a worker process: (the launch, Hydra's state), set by _start_worker


def visible_gpus(gpus: int | str) -> list[str]:
    """The GPUs to spread units over, as ``CUDA_VISIBLE_DEVICES`` values: ``auto``, every GPU this
    process sees; a number, the first that many of them (``CUDA_VISIBLE_DEVICES``' own list when
    it is set, else 0, 1, ...). More than this process sees is refused, except on a machine with
    no GPU and no ``CUDA_VISIBLE_DEVICES``, where a number fakes GPUs: their workers see none and
    run on the CPU, which is how the tests run this."""
    count = torch.cuda.device_count() if gpus == "auto" else int(gpus)
    listed = [gpu.strip() for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    available = len(listed) if listed else torch.cuda.device_count()
    if (listed or torch.cuda.is_available()) and count > available:  # never a GPU this process was not given
        raise ValueError(
            f"hydra.launcher.gpus={gpus} asks for more GPUs than the {available} this process sees; "
            f"use hydra.launcher.gpus=auto or a number up to {available}."
        )
    return [listed[n] if n < len(listed) else str(n) for n in range(count)]


def _start_worker(launch: bytes, gpu_ids, ready, stopping, singleton_state: bytes) -> None:
    """A worker's initializer: its GPU (before anything in it touches CUDA), then it waits until
    every worker is up, so that the first units go one to each GPU."""
    global _worker
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids.get()
    # Ctrl-C reaches every process of the terminal's group: the launching process alone handles
    # it, and stops the workers with SIGTERM (run_on_gpus). Idle, a worker ends quietly on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker = (cloudpickle.loads(launch), cloudpickle.loads(singleton_state), stopping)
    try:
        ready.wait(timeout=READY_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass  # a worker that never came up: the others take its units


def _run(unit: Unit) -> bytes:
    """The unit's job returns, pickled by cloudpickle too (they hold Hydra's structured configs,
    whose classes the standard pickle does not find by name)."""
    launch, singleton_state, stopping = _worker
    if stopping.is_set():  # the sweep was stopped: a unit already handed to this worker does not start
        return cloudpickle.dumps({})
    signal.signal(signal.SIGTERM, raise_terminated)  # while a unit runs: its jobs recorded as interrupted
    try:
        return cloudpickle.dumps(run_unit_remote(launch, unit, singleton_state))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_on_gpus(
    launch: Launch, units: list[Unit], gpus: list[str], singleton_state: dict
) -> list[dict[int, JobReturn]]:
    """Each unit's job returns, the units run by one worker per GPU (at most one per unit)."""
    workers = min(len(gpus), len(units))
    context = multiprocessing.get_context("spawn")
    gpu_ids = context.Queue()
    for gpu in gpus[:workers]:
        gpu_ids.put(gpu)
    ready, stopping = context.Barrier(workers), context.Event()
    initargs = (cloudpickle.dumps(launch), gpu_ids, ready, stopping, cloudpickle.dumps(singleton_state))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=initargs) as pool:
        futures = [pool.submit(_run, unit) for unit in units]
        try:
            return [cloudpickle.loads(future.result()) for future in futures]
        except BaseException:  # Ctrl-C or SIGTERM here, or a worker's failure
            stopping.set()  # no unit starts after it (the pool hands some to its workers ahead)
            for future in futures:
                future.cancel()
            # The pool has no call that signals its workers (shutdown waits for the running
            # units), so each is sent SIGTERM: a running unit records its jobs as interrupted.
            for process in list(pool._processes.values()):
                if process.is_alive():
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
