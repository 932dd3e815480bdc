"""Training on several processes (DistributedDataParallel) through accelerate and fastai's distributed callbacks.

Launch the ordinary command under a launcher and every process runs it; WORLD_SIZE and RANK in the
environment make it a distributed run:

    accelerate launch --num_processes 4 -m covfast train resnet34 ...      (4 GPUs of one machine)
    torchrun --nproc_per_node 2 -m covfast train attention-unet --device cpu ...   (2 CPU processes, gloo)

Each process reads its share of every epoch (fastai's `DistributedDL`), metrics are gathered from all
of them (`SegmentationStats`), and only the main process writes the run directory.
"""

from __future__ import annotations

import atexit
from typing import Any

import torch
import torch.distributed as dist
from fastai.torch_core import num_distrib, rank_distrib
from torch import nn

from .errors import CovfastError

__all__ = ["world_size", "rank", "is_main", "start", "finish", "from_main", "unwrap", "weights_agree"]


def world_size() -> int:
    "Processes taking part in this run (1 when not launched by accelerate/torchrun)."
    return max(1, num_distrib())


def rank() -> int:
    "This process's place among them; 0 is the main process."
    return rank_distrib()


def is_main() -> bool:
    return rank() == 0


def _broadcast_on_backend(self, t, rank: int):
    "fastai's `DistributedDL._broadcast` with the tensor on the backend's device (fastai's puts it on CUDA, which gloo on CPU lacks)."
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(t, dtype=torch.long, device=device)
    dist.broadcast(t, rank)
    return t.cpu().tolist()


def start(device: str | None = None) -> torch.device | None:
    "In a distributed run, join the process group (NCCL on CUDA, gloo on CPU) and return this process's device; else None."
    if world_size() == 1:
        return None
    try:
        from accelerate import PartialState
    except ImportError:
        raise CovfastError('a distributed run needs accelerate: pip install "covfast[accelerate]"') from None
    from fastai.distributed import DistributedDL
    kind = None if device in (None, "auto") else torch.device(device).type  # config.json may hold 'cuda:0'
    if kind == "cuda" and not torch.cuda.is_available():
        raise CovfastError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    cpu = kind == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    DistributedDL._broadcast = _broadcast_on_backend
    # leave the group on every way out (done, error, Ctrl-C) while the interpreter is still whole
    atexit.register(finish)
    return torch.device(state.device)


def finish() -> None:
    """Leave the process group, if this process joined one.

    `start` registers it to run at exit: a gloo group left for the interpreter's shutdown can abort the
    process ("terminate called without an active exception", SIGABRT) after a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def from_main(value: Any) -> Any:
    "The main process's `value`, in every process (picklable values only); `value` itself when not distributed."
    if world_size() == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    "The model inside a DistributedDataParallel wrapper (whose state_dict keys carry a 'module.' prefix)."
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def weights_agree(model: nn.Module) -> bool:
    """Whether every process ends with the same weights, as DDP's averaged gradients guarantee.

    A cheap check (one float64 checksum per process) that the model really trained as one: a model
    the launcher failed to wrap would train a separate copy on each share of the data.
    """
    if world_size() == 1 or not dist.is_initialized():
        return True
    params = list(unwrap(model).parameters())
    total = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1).to(params[0].device)
    sums = [torch.zeros_like(total) for _ in range(world_size())]
    dist.all_gather(sums, total)
    return all(bool(torch.equal(sums[0], s)) for s in sums)
