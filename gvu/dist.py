"""torch.distributed for gvu: small and explicit. One process per device, launched by torchrun.

  one node    torchrun --standalone --nproc_per_node 8 -m gvu train ...
  many nodes  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m gvu train ...
  CPU         torchrun --standalone --nproc_per_node 2 ...  (gloo; `accelerate launch --cpu` silently runs one process)

Row layout. A step's M = B*G rows keep one prompt's G rows adjacent (what gvu.grpo expects) and are dealt to the
W ranks by stride: rank r holds global rows r, r+W, r+2W, ... (rank_slice). A prompt's images may therefore sit on
several ranks, so rewards are gathered into global row order before the group advantages are computed
(global_advantages), and each rank keeps its own slice. Every rank holds M/W rows (check_divisible), so DDP's
gradient average over ranks equals the one-process gradient of the whole batch.

Gradients. The policy's log-probs must be computed inside the wrapped module's forward (PolicyForward): DDP's and
FSDP's gradient hooks fire only there; calling submodules of the unwrapped model lets ranks diverge without an error.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run. backend is None for a single process (no process group)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None, timeout_min: float | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
    nccl when the device is CUDA, gloo on CPU. device: "cuda", "cpu" or None (CUDA when available).
    timeout_min: how long a collective waits for the slowest rank (None: torch's default, 10 minutes under nccl,
    too short while rank 0 alone evaluates a 7B model and the others wait at a barrier).
    Without torchrun (WORLD_SIZE unset or 1) this is a single process and no group is created."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if cuda:  # one process: the GPU asked for (cuda:N); under torchrun each rank takes the GPU of its LOCAL_RANK
        dev = torch.device(device) if world == 1 and ":" in (device or "") else torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        timeout = None if timeout_min is None else datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend, device_id=dev if cuda else None, timeout=timeout)
    return DistInfo(rank, world, local, dev, backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 logs, writes the evaluations and checkpoints."""
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- data layout

def check_divisible(global_batch: int, world: int, what: str = "rows per step (batch_prompts x group_size)") -> None:
    """Every rank must hold the same number of rows; raise a ValueError that says how to fix it otherwise."""
    if world < 1 or global_batch % world:
        lo, hi = global_batch // world * world, (global_batch // world + 1) * world
        raise ValueError(f"the world size {world} does not divide the {what} = {global_batch}: every rank needs the "
                         f"same number of rows (DDP averages gradients over ranks). Use {hi}"
                         + (f" or {lo}" if lo else "") + f", or a world size that divides {global_batch}")


def rank_slice(items: Sequence[T] | torch.Tensor, rank: int, world: int):
    """This rank's rows, strided: items[rank], items[rank + world], ... (a list or a tensor's first dimension)."""
    return items[rank::world]


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: this rank's GPU under NCCL (which rejects CPU tensors),
    the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order: [W * n, ...], on t's device. Shapes must be equal
    on all ranks. t may live anywhere (the rewards are on the CPU): it travels through collective_device()."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    x = t.contiguous().to(collective_device())
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts).to(t.device)


def all_gather_objects(obj) -> list:
    """Every rank's obj (anything picklable), in rank order, on every rank; [obj] without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Inverse of rank_slice: every rank's rows [M/W, ...] -> all rows [M, ...] in global order (on every rank)."""
    w = world_size()
    stacked = all_gather_tensor(local).reshape(w, *local.shape)  # [W, M/W, ...], row i of rank r is global i*W + r
    return stacked.transpose(0, 1).reshape(w * local.shape[0], *local.shape[1:])


@dataclass
class DistAdvantages:
    rewards: torch.Tensor  # [B*G] every row's reward in global order (identical on all ranks; for logging)
    advantages: torch.Tensor  # [B*G/W] this rank's rows' advantages, in its rank_slice order


def global_advantages(local_rewards: torch.Tensor, group_size: int, scale: str = "group",
                      eps: float = 1e-4) -> DistAdvantages:
    """Gather the rewards of this step's rows (rank-strided, [B*G/W]) into global order, compute GRPO's group
    advantages over whole groups, and keep this rank's slice. Equals the one-process computation."""
    from gvu.grpo import group_advantages

    rewards = gather_rows(local_rewards.float())
    adv = group_advantages(rewards, group_size, scale, eps)
    return DistAdvantages(rewards, rank_slice(adv, rank(), world_size()))


def reduce_metrics(metrics: dict) -> dict:
    """Mean of each numeric metric across ranks (equal rows per rank, so a mean of means is the global mean).
    Non-numeric values (messages) are kept as this rank's. All ranks must report the same numeric keys."""
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    w = world_size()
    if w == 1 or not keys:
        return dict(metrics)
    every = [None] * w
    dist.all_gather_object(every, keys)
    if any(k != keys for k in every):
        raise ValueError(f"ranks report different metrics: {every}")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(values)
    return {**metrics, **dict(zip(keys, (values / w).tolist()))}


# ----------------------------------------------------------------------------------------------- wrapped policy

class PolicyForward(nn.Module):
    """Routes a log-prob computation through a module's forward, so that DDP/FSDP wrap it.

    model: the policy (its parameters become this module's); fn: computes log-probs using that same model,
    e.g. backend.image_token_logprobs. ddp(PolicyForward(backend.model, backend.image_token_logprobs))(prompts,
    tokens, temperature) -> logp [M, N] with gradient hooks in place."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args, fn: Callable | None = None, **kwargs):
        """self.fn(*args, **kwargs), or fn(*args, **kwargs) when given (used to run FSDP's root forward once)."""
        return (fn or self.fn)(*args, **kwargs)


def ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel over all ranks (the module itself for a single process)."""
    if info.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def fsdp2(module: PolicyForward, info: DistInfo, block_types: tuple[type, ...]) -> nn.Module:
    """FSDP2 (fully_shard): each block (e.g. LlamaDecoderLayer, JanusVisionEncoderLayer) is its own unit, the rest
    is sharded at the root. Parameters become DTensors; gradients too (p.grad.full_tensor() for a full copy).
    The module itself for a single process.

    Parameters are replaced by sharded ones: build the optimiser from the wrapped module's parameters afterwards,
    and copy the model (frozen judge, KL reference) before. Work outside the wrapped forward (rollout, reward,
    evaluation, checkpoints) runs inside full_params(), on every rank."""
    if info.world == 1:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world,))
    for m in module.modules():
        if isinstance(m, block_types):
            fully_shard(m, mesh=mesh)
    fully_shard(module, mesh=mesh)
    module(fn=lambda: None)  # FSDP initialises lazily, and only from the root's forward
    for unit in fsdp_units(module):  # that forward leaves the root gathered: shard it, so that parameters() (the
        unit.reshard()               # optimiser's) are the sharded parameters FSDP keeps
    return module


def fsdp_units(module: nn.Module) -> list:
    """The FSDP2-sharded submodules of module (root included); [] without FSDP."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_params(module: nn.Module):
    """Every rank must enter: gathers the full parameters of every FSDP unit and keeps them gathered (no resharding
    after each forward) until exit, so that code outside the wrapped forward (rollout, reward, evaluation on rank 0,
    checkpoints) sees ordinary tensors. A no-op without FSDP."""
    units = fsdp_units(module)
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


def full_optimizer_state(module: nn.Module, optimizer) -> dict | None:
    """Every rank must call: the optimiser state gathered in full, keyed by parameter name (FSDP); None without
    FSDP (optimizer.state_dict() is then complete on every rank)."""
    if not fsdp_units(module):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer, state: dict) -> None:
    """Restore an optimiser state written by checkpoint.save: the full name-keyed state under FSDP, the plain
    state_dict otherwise."""
    if not fsdp_units(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
