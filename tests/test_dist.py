"""gvu.dist: two gloo processes on CPU give what one process gives with the same global batch.

The two-process checks run once, under `torchrun --standalone --nproc_per_node 2` (this file is the worker script),
and write one JSON file per rank; the tests below read them. Single-process tests cover the layout math.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gvu import dist as gd
from gvu.grpo import group_advantages, grpo_loss

REPO = Path(__file__).resolve().parents[1]
B, G, N, V = 4, 3, 5, 7  # prompts, images per prompt, image tokens, image vocabulary: M = 12 rows, 6 per rank


class TinyPolicy(nn.Module):
    """Stands in for the policy: log p(tokens | prompt) [M, N] from a prompt embedding and a position embedding."""

    def __init__(self):
        super().__init__()
        self.prompt = nn.Embedding(B, 8)
        self.pos = nn.Embedding(N, 8)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, V)

    def logprobs(self, prompt_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.prompt(prompt_ids)[:, None] + self.pos.weight[None]  # [M, N, 8]
        logp = self.head(self.body(h)).log_softmax(-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1)


def batch():
    """The global batch, identical in every process: prompt ids, sampled tokens, rewards (rows of a prompt adjacent)."""
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.arange(B).repeat_interleave(G)
    tokens = torch.randint(0, V, (B * G, N), generator=g)
    rewards = torch.rand(B * G, generator=g)
    return prompt_ids, tokens, rewards


def make_policy() -> TinyPolicy:
    torch.manual_seed(1)
    return TinyPolicy()


def full_batch_gradients(adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """The one-process reference: GRPO loss on all M rows, plain backward."""
    policy = make_policy()
    prompt_ids, tokens, _ = batch()
    logp = policy.logprobs(prompt_ids, tokens)
    loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones_like(logp, dtype=torch.bool))
    loss.backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters()}


def local_step(wrapped: nn.Module, info: gd.DistInfo) -> None:
    """What the training loop does on each rank: its strided rows, gathered advantages, loss through forward."""
    prompt_ids, tokens, rewards = batch()
    mine = lambda x: gd.rank_slice(x, info.rank, info.world)  # noqa: E731
    adv = gd.global_advantages(mine(rewards), G).advantages
    logp = wrapped(mine(prompt_ids), mine(tokens))
    loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones_like(logp, dtype=torch.bool))
    loss.backward()


def worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    info = gd.init("cpu")
    prompt_ids, tokens, rewards = batch()
    result = {"rank": info.rank, "world": info.world, "backend": info.backend}

    # advantages: groups straddle ranks (G = 3, rows strided over 2 ranks); gather, normalise, slice
    gd.check_divisible(B * G, info.world)
    d = gd.global_advantages(gd.rank_slice(rewards, info.rank, info.world), G)
    ref = group_advantages(rewards, G)
    result["rewards_err"] = (d.rewards - rewards).abs().max().item()
    result["adv_err"] = (gd.gather_rows(d.advantages) - ref).abs().max().item()
    result["local_adv_err"] = (d.advantages - gd.rank_slice(ref, info.rank, info.world)).abs().max().item()

    # metrics: the mean of per-rank means is the global mean (equal rows per rank)
    local = gd.rank_slice(rewards, info.rank, info.world)
    m = gd.reduce_metrics({"reward/mean": local.mean().item(), "perf/rank": float(info.rank), "alarm": "text"})
    result["metric_err"] = abs(m["reward/mean"] - rewards.mean().item())
    result["rank_mean"] = m["perf/rank"]
    result["alarm_kept"] = m["alarm"] == "text"

    # DDP: gradients after backward equal the one-process gradient of the full batch
    reference = full_batch_gradients(ref)
    policy = make_policy()
    wrapped = gd.ddp(gd.PolicyForward(policy, policy.logprobs), info)
    local_step(wrapped, info)
    result["ddp_grad_err"] = max((p.grad - reference[n]).abs().max().item() for n, p in policy.named_parameters())

    # FSDP2 (fully_shard) on CPU / gloo: sharded gradients, gathered, equal the same reference
    policy = make_policy()
    sharded = gd.fsdp2(gd.PolicyForward(policy, policy.logprobs), info, (nn.Sequential,))
    local_step(sharded, info)
    result["fsdp_grad_err"] = max((p.grad.full_tensor() - reference[n]).abs().max().item()
                                  for n, p in policy.named_parameters())
    result["fsdp_sharded"] = all(type(p).__name__ == "DTensor" for p in policy.parameters())
    gd.barrier()
    with open(os.path.join(out_dir, f"rank{info.rank}.json"), "w") as f:
        json.dump(result, f)
    gd.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    logs = []
    for _ in range(2):  # one retry: a rendezvous or socket hiccup of the launcher is not what this file tests
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        logs.append(proc.stdout[-2000:] + proc.stderr[-4000:])
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, "\n----- retry -----\n".join(logs)
    if len(logs) > 1:
        print("torchrun needed a retry; first attempt:\n" + logs[0])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_really_ran_with_gloo(two_ranks):
    assert [(r["rank"], r["world"], r["backend"]) for r in two_ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]


def test_gathered_then_normalised_advantages_equal_one_process(two_ranks):
    for r in two_ranks:
        assert r["rewards_err"] == 0.0
        assert r["adv_err"] < 1e-6 and r["local_adv_err"] < 1e-6


def test_metrics_reduce_to_the_global_mean(two_ranks):
    for r in two_ranks:
        assert r["metric_err"] < 1e-6 and r["rank_mean"] == 0.5 and r["alarm_kept"]


def test_ddp_gradients_equal_the_full_batch_gradient(two_ranks):
    for r in two_ranks:
        assert r["ddp_grad_err"] < 1e-5


def test_fsdp2_gradients_equal_the_full_batch_gradient(two_ranks):
    for r in two_ranks:
        assert r["fsdp_sharded"] and r["fsdp_grad_err"] < 1e-5


# ----------------------------------------------------------------------------------------------- one process

def test_rank_slices_partition_rows_and_gather_restores_their_order():
    rows = torch.arange(12)
    parts = [gd.rank_slice(rows, r, 4) for r in range(4)]
    assert parts[1].tolist() == [1, 5, 9]
    stacked = torch.stack(parts).transpose(0, 1).reshape(-1)  # what gather_rows does with the gathered parts
    assert torch.equal(stacked, rows)
    assert gd.rank_slice(["a", "b", "c", "d"], 1, 2) == ["b", "d"]


def test_a_world_size_that_does_not_divide_the_batch_is_refused():
    gd.check_divisible(16, 8)
    with pytest.raises(ValueError, match="world size 3 does not divide the rows per step .* = 16.*Use 18 or 15"):
        gd.check_divisible(16, 3)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = gd.init("cpu")
    assert (info.rank, info.world, info.backend, info.is_main) == (0, 1, None, True)
    x = torch.arange(6.0)
    assert torch.equal(gd.gather_rows(x), x)
    assert gd.reduce_metrics({"a": 1.0, "b": "x"}) == {"a": 1.0, "b": "x"}
    d = gd.global_advantages(batch()[2], G)
    assert torch.allclose(d.advantages, group_advantages(batch()[2], G))
    policy = make_policy()
    assert gd.ddp(policy, info) is policy


def test_the_process_group_waits_as_long_as_the_config_says(monkeypatch, tmp_path):
    """Ranks other than 0 wait at a barrier while rank 0 evaluates: the group's timeout comes from
    dist_timeout_min (torch's own default under nccl is 10 minutes), from the config through train() to the group."""
    import datetime

    import gvu.train as train_mod
    from gvu.config import TrainConfig
    from gvu.models.nano import SPECS, build_random
    from gvu.models.pretrain import save_model

    made = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(gd.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(gd.dist, "init_process_group", lambda backend, **kw: made.update(backend=backend, **kw))
    gd.init("cpu", timeout_min=90)
    assert made["backend"] == "gloo" and made["timeout"] == datetime.timedelta(minutes=90)
    gd.init("cpu")
    assert made["timeout"] is None  # torch's default

    asked = {}

    class Stop(Exception):
        pass

    def fake_init(device, timeout_min=None):
        asked["timeout_min"] = timeout_min
        raise Stop  # set-up stops here, before the model loads

    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], str(tmp_path / "model"))
    monkeypatch.setattr(train_mod.dist, "init", fake_init)
    with pytest.raises(Stop):
        train_mod.train(TrainConfig(model=str(tmp_path / "model"), batch_prompts=2, group_size=2, train_prompts=16,
                                    dist_timeout_min=45), str(tmp_path / "run"), progress=False)
    assert asked["timeout_min"] == 45
    with pytest.raises(ValueError, match="dist_timeout_min must be > 0"):
        TrainConfig(dist_timeout_min=0).validate()


def test_under_nccl_a_cpu_tensor_is_gathered_through_the_gpu_and_comes_back_to_the_cpu(monkeypatch):
    """NCCL rejects CPU tensors, and the rewards are on the CPU. Under a fake two-rank NCCL group the collective
    device is the rank's GPU; the gather then moves the tensor there and back (traced with the CPU standing in for
    the GPU, which this CPU-only torch lacks). The fake all_gather returns rank 1's rows as 10 + rank 0's."""
    seen = []

    def fake_all_gather(parts, x):
        seen.append(x.device)
        parts[0].copy_(x)
        parts[1].copy_(x + 10)

    monkeypatch.setattr(gd.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(gd.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(gd.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(gd.torch.cuda, "current_device", lambda: 0)
    assert gd.collective_device() == torch.device("cuda", 0)
    monkeypatch.setattr(gd, "collective_device", lambda: torch.device("cpu"))  # the move itself, traced below
    moved = []
    real_to = torch.Tensor.to

    def tracing_to(self, *a, **k):
        moved.append(a[0] if a else k.get("device"))
        return real_to(self, *a, **k)

    monkeypatch.setattr(gd.dist, "all_gather", fake_all_gather)
    monkeypatch.setattr(torch.Tensor, "to", tracing_to)
    out = gd.all_gather_tensor(torch.tensor([1.0, 2.0]))
    assert moved == [torch.device("cpu"), torch.device("cpu")]  # into collective_device(), then back to t's device
    assert seen == [torch.device("cpu")] and out.tolist() == [1.0, 2.0, 11.0, 12.0]
    monkeypatch.undo()
    assert gd.collective_device() == torch.device("cpu")  # no group at all: the CPU


if __name__ == "__main__":
    worker(sys.argv[1])

