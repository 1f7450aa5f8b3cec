"""Parallelism does not change the maths: two gloo processes on halves of a batch compute the
gradient one process computes on the whole batch; and the real torchrun command trains."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rung.algos import ppo
from rung.batch import Batch
from rung.distributed import ddp
from rung.nn import ActorCritic

pytestmark = pytest.mark.distributed


def make_batch(discrete: bool, n: int = 64) -> Batch:
    g = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 3, (n,), generator=g) if discrete else torch.randn(n, 2, generator=g)
    return Batch(obs=torch.randn(n, 4, generator=g), actions=actions, logprobs=torch.randn(n, generator=g) * 0.1 - 1.0,
                 values=torch.randn(n, generator=g), advantages=torch.randn(n, generator=g) * 3 + 1,
                 returns=torch.randn(n, generator=g))


def make_agent(discrete: bool) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(4, 3 if discrete else 2, discrete)


def gradients(model: torch.nn.Module, agent: ActorCritic, batch: Batch, cfg: ppo.Config) -> dict[str, torch.Tensor]:
    loss, _ = ppo.ppo_loss(model, batch, cfg, 0.2)
    loss.backward()
    return {k: p.grad.clone() for k, p in agent.named_parameters()}


def worker(rank: int, port: int, discrete: bool, out: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    info = ddp.DistInfo(rank, 2, rank)
    agent = make_agent(discrete)
    model = ddp.wrap(agent, info)
    full = make_batch(discrete)
    shard = full.index(torch.arange(rank * 32, rank * 32 + 32))
    out[rank] = gradients(model, agent, shard, ppo.Config(clip_vloss=True))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("discrete", [True, False], ids=["categorical", "gaussian"])
def test_two_process_gradient_equals_one_process_on_concatenated_batch(discrete):
    agent = make_agent(discrete)
    single = gradients(agent, agent, make_batch(discrete), ppo.Config(clip_vloss=True))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(free_port(), discrete, out), nprocs=2, join=True)
        per_rank = dict(out)
    for name, g in single.items():
        torch.testing.assert_close(per_rank[0][name], g, rtol=1e-5, atol=1e-6)
        # DDP leaves every rank with the same averaged gradient.
        torch.testing.assert_close(per_rank[1][name], per_rank[0][name], rtol=0, atol=0)


def llm_gradients(rollout, advantages, world: int, aggregation: str) -> dict[str, torch.Tensor]:
    from rung.algos import grpo
    from rung.llm.models import load_model

    model = load_model("tiny-gpt")[0]
    cfg = grpo.Config(model="tiny-gpt", task="target_token", micro_batch_size=3, loss_aggregation=aggregation,
                      max_new_tokens=rollout.response_ids.shape[1])
    from rung.llm.loop import global_counts

    grpo.accumulate_gradients(model, rollout, advantages, cfg, global_counts(rollout.response_mask, world), world)
    params = [p for p in model.parameters() if p.requires_grad]
    if world > 1:
        ddp.all_reduce_grads(params)
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def llm_worker(rank: int, port: int, path: str, aggregation: str, out: dict) -> None:
    from dataclasses import fields, replace

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rollout, advantages = torch.load(path, weights_only=False)
    half = slice(rank * 4, rank * 4 + 4)
    shard = replace(rollout, **{f.name: getattr(rollout, f.name)[half] for f in fields(rollout)
                                if isinstance(getattr(rollout, f.name), torch.Tensor)})
    out[rank] = llm_gradients(shard, advantages[half], 2, aggregation)
    dist.destroy_process_group()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_grpo_gradient_on_two_processes_equals_one_process(tmp_path, aggregation):
    pytest.importorskip("transformers")
    from rung.llm.generation import generate_grouped
    from rung.llm.models import load_model

    model, tok = load_model("tiny-gpt")
    # Two prompts x 4 samples, rank 0 gets the first group, rank 1 the second; eos made likely so
    # that the two halves hold different numbers of tokens (local normalisers would then differ).
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 2.5
    handle = model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    try:
        rollout = generate_grouped(model, tok, ["What is 3 + 4?", "1 * 2"], 4, max_new_tokens=12, seed=0)
    finally:
        handle.remove()
    counts = rollout.response_mask.sum(1)
    assert counts[:4].sum() != counts[4:].sum()
    advantages = torch.randn(8, generator=torch.Generator().manual_seed(1))
    single = llm_gradients(rollout, advantages, 1, aggregation)
    path = tmp_path / "rollout.pt"
    torch.save((rollout, advantages), path)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(llm_worker, args=(free_port(), str(path), aggregation, out), nprocs=2, join=True)
        per_rank = dict(out)
    for name, g in single.items():
        torch.testing.assert_close(per_rank[0][name], g, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(per_rank[1][name], per_rank[0][name], rtol=0, atol=0)


def test_torchrun_two_processes_trains_and_only_rank0_writes(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    run_dir = tmp_path / "ddp"
    p = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(free_port()), "--no-python",
                        sys.executable, "-m", "rung.cli", "train", "ppo", "--total-timesteps", "4096",
                        "--eval-every", "2048", "--eval-episodes", "2", "--normalize-obs", "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["total_timesteps"] == 4096
    # 2 ranks x 8 envs x 32 steps = 512 steps an iteration, logged once (by rank 0).
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "losses/policy" in line]
    assert steps == list(range(512, 4097, 512))
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


def collectives_worker(rank: int, port: int, out: dict) -> None:
    """Each rank with different local values, as two processes on their own envs have."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from rung.algos import grpo, sac
    from rung.errors import UserError
    from rung.llm.config import load_policy
    from rung.run import Run

    # KL early stop: rank 0 alone is above the target, the mean (0.25) is not.
    out[rank, "kl"] = (ppo.kl_exceeded(torch.tensor([0.4, 0.0][rank]), 0.3), ppo.kl_exceeded(torch.tensor(0.5), None))
    # Float32 values with a large mean: the pooled std must not cancel to 0.
    g = torch.Generator().manual_seed(rank)
    x = 1e4 + torch.randn(32768, generator=g)
    out[rank, "std"] = ddp.mean_std(x)[1].item()
    # LoRA's A matrices start random, from each rank's own seed.
    torch.manual_seed(100 + rank)
    model, _ = load_policy(grpo.Config(model="tiny-gpt", task="target_token", lora_r=4), torch.device("cpu"))
    out[rank, "lora"] = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    try:
        Run("sac", sac.Config(env="Pendulum-v1", run_dir=os.devnull))
    except UserError as e:
        out[rank, "refused"] = str(e)
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ranks_decide_alike_and_start_alike():
    pytest.importorskip("peft")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(collectives_worker, args=(free_port(), out), nprocs=2, join=True)
        out = dict(out)
    assert out[0, "kl"] == out[1, "kl"] == (False, False)
    g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    both = torch.cat([1e4 + torch.randn(32768, generator=g0), 1e4 + torch.randn(32768, generator=g1)]).double()
    assert out[0, "std"] == out[1, "std"] == pytest.approx(both.std().item(), rel=1e-4)
    lora0, lora1 = out[0, "lora"], out[1, "lora"]
    assert any("lora_A" in k for k in lora0)
    for k in lora0:
        assert torch.equal(lora0[k], lora1[k]), k
    assert "sac runs in one process" in out[0, "refused"] and "sac runs in one process" in out[1, "refused"]
