"""An out-of-memory error as a sentence that says what to lower: in a run (``run.experiment``),
a pack (``packed.training``) and the pack-size probe (``packed.size_probe``, which only asks
whether an error is one)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from mnist_lab.cli.config_error import ConfigError


def out_of_memory(error: BaseException) -> str | None:
    """Which memory ``error`` says ran out, "GPU" or "CPU", or None if it is no out-of-memory
    error: torch raises ``torch.OutOfMemoryError`` when a GPU's memory runs out, and its CPU
    allocator a RuntimeError ("DefaultCPUAllocator: can't allocate memory: ...")."""
    if isinstance(error, torch.OutOfMemoryError):
        return "GPU"
    text = str(error) if isinstance(error, RuntimeError) else ""
    if "out of memory" in text or "can't allocate memory" in text:
        return "CPU" if "CPU" in text else "GPU"
    return None


def out_of_memory_message(cfg: DictConfig, memory: str = "GPU", pack: int = 1) -> str:
    """What to lower when the ``memory`` ("GPU" or "CPU") runs out, in a run or in a pack of
    ``pack`` jobs (run.experiment and packed.training raise it in place of torch's error)."""
    batches = f"data.batch_size={cfg.data.batch_size} and data.eval_batch_size={cfg.data.eval_batch_size}"
    smaller_eval = f"data.eval_batch_size={max(cfg.data.eval_batch_size // 4, 1)}"
    elsewhere = ", or use trainer=cpu" if memory == "GPU" else ""
    if pack > 1:  # a pack trains its jobs' batches at once, and evaluates in chunks of one job's batch
        fewer = f"{max(pack // 2, 2)}, or 1 to train each job alone" if pack > 2 else "1: each job alone"
        return (
            f"the {memory} ran out of memory training a pack of {pack} jobs with {batches} (validation and "
            f"test batches); train fewer jobs per pack first (hydra.launcher.pack_size={fewer}), then lower "
            f"data.batch_size, data.eval_batch_size (e.g. {smaller_eval}) or the model's size{elsewhere}."
        )
    return (
        f"the {memory} ran out of memory with {batches} (validation and test batches); lower "
        f"data.eval_batch_size first (e.g. {smaller_eval}), then data.batch_size or the model's size{elsewhere}."
    )


def as_config_error(error: BaseException, cfg: DictConfig, pack: int = 1) -> BaseException:
    """``error`` itself, or, for an out-of-memory error, the ``ConfigError`` that says what to
    lower (``out_of_memory_message``)."""
    memory = out_of_memory(error)
    return error if memory is None else ConfigError(out_of_memory_message(cfg, memory, pack))
