"""A pack: M jobs' configs trained as one packed model, each job as its solo run would train.

``Pack(cfgs, device)`` builds, for each job, what ``run.experiment.fit_and_test`` builds (its net under
its own seed, its loss, optimizer and scheduler, its batch order), then stacks them: a
``PackedNet``, a ``PackedLoss``, a ``PackedOptimizer``, the jobs' own schedulers
(``JobSchedules``) and ``PackedBatches``. ``train_epoch`` runs one epoch of its step
(``packed.graph.make_packed_step``: captured as a CUDA graph on a GPU, as a solo run's step is;
``PackedStep`` on the CPU), ``evaluate`` validates and tests, and ``end_epoch`` steps the
schedules as ``Classifier`` does (``packed.training.pack_epochs`` runs these, epoch after epoch);
``solo_net(i)`` gives job i's net back as an ordinary ``models.py`` module, and ``resume`` takes
the jobs' ``last.ckpt`` back in (a resumed sweep's jobs, ``packed.resume``).

A job whose loss goes bad (NaN, inf, or above its ``step.divergence_threshold``, checked every
``step.check_every`` steps by a solo run's check, ``epoch_log.first_bad_steps``) is frozen: its
lr is set to 0 and its parameters and batch-norm statistics are put back after every later step,
so its net stays as it was when the check found it (what its checkpoints hold), and the other jobs
train on. The jobs never mix (each has its own slice of every tensor), so a frozen job's NaNs
cannot reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist_lab.data.datamodule import DeviceBatches, split_tensors
from mnist_lab.packed.graph import make_packed_step
from mnist_lab.packed.nets import PackedNet
from mnist_lab.packed.optimizer import PackedOptimizer
from mnist_lab.packed.resume import load_job, start_epoch
from mnist_lab.packed.schedules import JobSchedules
from mnist_lab.packed.step import PackedBatches, PackedLoss
from mnist_lab.run.classifier import dropout_seed
from mnist_lab.run.epoch_log import first_bad_steps

# Settings every job of a pack shares (the others, optimizer and scheduler arguments, loss,
# seed and dropout rates, may differ per job). The net's shape and the optimizer and scheduler
# classes are checked where the pack is built (PackedNet, PackedOptimizer, JobSchedules).
MUST_MATCH = (
    "data.data_dir",
    "data.normalize",
    "data.batch_size",
    "data.val_size",
    "data.split_seed",
    "data.drop_last",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.limit_train_batches",
    "trainer.precision",
    "trainer.accelerator",
    "trainer.devices",
    "step.check_every",  # one check for the whole pack, at its jobs' interval
    "step.cuda_graph",  # one step for the whole pack (packed_graph)
)


def unshared_setting(cfgs: list[DictConfig]) -> str | None:
    """The first setting of ``MUST_MATCH`` on which the jobs differ, or None."""
    for key in MUST_MATCH:
        if len({str(OmegaConf.select(cfg, key)) for cfg in cfgs}) > 1:
            return key
    return None


class Pack:
    """M jobs (their composed train configs) trained side by side on ``device``."""

    def __init__(
        self,
        cfgs: list[DictConfig],
        device: torch.device | str = "cpu",
        cuda_graph: str | None = None,
        say: Callable[[str], None] = print,
    ):
        key = unshared_setting(cfgs)
        if key:
            raise ValueError(f"the jobs of a pack must share {key}")
        if OmegaConf.select(cfgs[0], "trainer.limit_train_batches") is not None:
            raise ValueError("trainer.limit_train_batches cannot be packed yet")
        self.cfgs, self.device, self.epoch = cfgs, torch.device(device), 0
        solos = []
        for cfg in cfgs:  # as train.fit_and_test: the net is the first thing drawn after seeding
            L.seed_everything(cfg.seed, verbose=False)
            solos.append(instantiate(cfg.model))
        self.net = PackedNet(solos).to(self.device)
        self.net.seed_dropout(self._dropout_seeds())  # train_epoch reseeds them at each epoch's start
        self.loss = PackedLoss([instantiate(cfg.loss) for cfg in cfgs]).to(self.device)
        make_optimizers = [instantiate(cfg.optimizer) for cfg in cfgs]
        self.make_optimizers = make_optimizers  # each job's solo optimizer (its checkpoints' format)
        self.optimizer = PackedOptimizer(self.net.parameters(), make_optimizers)
        # the jobs' shared step.cuda_graph (MUST_MATCH; or ``cuda_graph``): a captured step on a GPU,
        # else the eager one; ``say`` hears why a graph is off
        cuda_graph = str(cfgs[0].step.cuda_graph) if cuda_graph is None else cuda_graph
        self.step = make_packed_step(self.net, self.loss, self.optimizer, self.device, cuda_graph, say)

        data, first = cfgs[0].data, cfgs[0]
        tensors = split_tensors(data, self.device)
        train_x, train_y = tensors["train_x"], tensors["train_y"]
        self.val_x, self.val_y = tensors["val_x"], tensors["val_y"]
        self.batches = PackedBatches(
            [
                DeviceBatches(
                    train_x,
                    train_y,
                    data.batch_size,
                    shuffle=True,
                    seed=cfg.data.shuffle_seed,
                    epoch=lambda: self.epoch,
                    drop_last=data.drop_last,
                )
                for cfg in cfgs
            ]
        )
        self.epochs = first.trainer.max_epochs
        max_steps = OmegaConf.select(first, "trainer.max_steps", default=-1)
        total = self.batches.batches * self.epochs  # as data.optimizer_steps counts them
        self.total_steps = min(total, max_steps) if max_steps and max_steps > 0 else total
        make_schedulers = [instantiate(cfg.scheduler) if cfg.get("scheduler") else None for cfg in cfgs]
        self.schedules = JobSchedules(make_optimizers, make_schedulers, self.total_steps)
        self.schedules.apply(self.optimizer)
        self.steps_done = 0
        self.check_every = min(int(cfg.step.check_every) for cfg in cfgs)
        self.threshold = torch.tensor([float(cfg.step.divergence_threshold) for cfg in cfgs], device=self.device)
        self.active = torch.ones(self.models, dtype=torch.bool, device=self.device)
        self.diverged_at: list[int | None] = [None] * self.models  # run-wide step (1-based) of the bad loss
        self.stopped_at: list[int | None] = [None] * self.models  # steps the job had made when frozen
        self._frozen: list[int] = []
        self._frozen_index = torch.zeros(0, dtype=torch.long, device=self.device)  # _frozen on the device
        self._snapshots: list[torch.Tensor] = []
        self._tables: dict[str, torch.Tensor] = {}  # this epoch's per-step schedule

    def resume(self, checkpoints: Sequence[dict | None]) -> None:
        """Each job's state from the ``last.ckpt`` it resumes (``packed.resume.load_job``; None:
        a job that starts afresh), and the pack at the epoch after theirs. The jobs must have
        stopped at the same epoch and step, or all start afresh."""
        points = {(start_epoch(c), None if c is None else int(c["global_step"])) for c in checkpoints}
        if len(points) > 1:
            raise ValueError("the jobs of a pack must resume from the same epoch")
        ((self.epoch, steps),) = points
        if steps is None:
            return
        for i, checkpoint in enumerate(checkpoints):
            load_job(self, i, checkpoint)
        self.steps_done = self.optimizer.steps = steps
        self.schedules.apply(self.optimizer)

    def _dropout_seeds(self) -> list[int]:
        return [dropout_seed(cfg.seed, self.epoch) for cfg in self.cfgs]

    @property
    def models(self) -> int:
        return len(self.cfgs)

    def train_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch (or what is left of ``trainer.max_steps``): each step's loss ``[steps, M]``
        and each job's correct predictions ``[M]``, on the device (no host sync)."""
        steps = min(self.batches.batches, self.total_steps - self.steps_done)
        # Each job's dropout stream seeded as its solo run seeds torch's at this epoch's start.
        self.net.seed_dropout(self._dropout_seeds())
        self.net.train()
        tables = self.schedules.epoch_tables(steps, self.device)
        if "lr" in tables:
            tables["lr"].mul_(self.active)
        self._tables = tables
        losses = torch.zeros(steps, self.models, device=self.device)
        correct = torch.zeros(self.models, dtype=torch.long, device=self.device)
        checked = 0
        for k, (x, y) in enumerate(self.batches):
            if k == steps:
                break
            for name, table in tables.items():
                self.optimizer.set(name, table[k])
            losses[k], step_correct = self.step(x, y)
            correct += step_correct * self.active
            if self._frozen:
                self._restore_frozen()
            if (k + 1) % self.check_every == 0:
                self._check(losses, checked, k + 1)
                checked = k + 1
                if len(self._frozen) == self.models:  # every job diverged: stop, as a solo run stops
                    steps, losses = k + 1, losses[: k + 1]
                    break
        self._check(losses, checked, steps)
        self.steps_done += steps
        self.epoch += 1
        return losses, correct

    def _check(self, losses: torch.Tensor, start: int, end: int) -> None:
        """Freeze each active job with a bad loss among this epoch's steps ``start:end``: the solo
        run's check (``epoch_log.first_bad_steps``, one host sync), one column per job."""
        if end <= start:
            return
        firsts = first_bad_steps(losses[start:end], self.threshold, watched=self.active)
        for i, first in enumerate(firsts):
            if first is not None:
                self.diverged_at[i] = self.steps_done + start + first + 1
                self.stopped_at[i] = self.steps_done + end
                self.freeze(i)

    def _job_tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer that holds one slice per job (models first)."""
        return [t for t in (*self.net.parameters(), *self.net.buffers()) if t.dim() and t.shape[0] == self.models]

    def freeze(self, i: int) -> None:
        """Stop job ``i``: lr 0 from now on, and its weights put back after every step."""
        self.active[i] = False
        self._frozen.append(i)
        self._frozen_index = torch.tensor(self._frozen, device=self.device)  # once: no host copy per step
        with torch.no_grad():
            self._snapshots = [t[self._frozen].clone() for t in self._job_tensors()]
        self._mask_lr()

    def _mask_lr(self) -> None:
        self.optimizer.hyper["lr"].mul_(self.active)
        if "lr" in self._tables:
            self._tables["lr"].mul_(self.active)

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        for tensor, snapshot in zip(self._job_tensors(), self._snapshots, strict=True):
            tensor.index_copy_(0, self._frozen_index, snapshot)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each job's loss and accuracy ``[M]`` on one set of images (validation, test), in chunks
        of ``data.eval_batch_size / M`` images: the memory of one solo run's evaluation batch."""
        self.net.eval()
        chunk = max(1, int(self.cfgs[0].data.get("eval_batch_size", len(x))) // self.models)
        loss_sum = torch.zeros(self.models, device=self.device)
        correct = torch.zeros(self.models, device=self.device)
        for start in range(0, len(x), chunk):
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            logits = self.net(xs.expand(self.models, *xs.shape))
            ys = ys.expand(self.models, *ys.shape)
            loss_sum += self.loss(logits, ys) * len(xs)  # each job's mean over the chunk
            correct += (logits.argmax(dim=-1) == ys).sum(dim=1)
        return loss_sum / len(x), correct / len(x)

    def end_epoch(self, val_acc: list[float] | None = None) -> None:
        """Step the per-epoch schedules (as ``Classifier.on_train_epoch_end``)."""
        self.schedules.end_epoch(val_acc)
        if not self.schedules.per_step:
            self.schedules.apply(self.optimizer)
            self._mask_lr()

    def solo_net(self, i: int) -> nn.Module:
        """Job ``i``'s net as its solo run's class (``state_dict`` loads into it)."""
        return self.net.copy_into(i, instantiate(self.cfgs[i].model))
