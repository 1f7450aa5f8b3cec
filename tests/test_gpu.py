"""CUDA paths, run where a GPU exists (skipped elsewhere): batched envs on the device agree with the
CPU, and PPO trains on a batched env without leaving the device."""

import pytest
import torch

from rung.envs import batched

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list(batched.ENVS))
def test_batched_env_on_cuda_matches_cpu(name):
    cpu = batched.make(name, 64, device="cpu", seed=0, dtype=torch.float64)
    gpu = batched.make(name, 64, device="cuda", seed=0, dtype=torch.float64)
    cpu.reset()
    gpu.reset()
    gpu.state = cpu.state.cuda()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        a = torch.randint(0, cpu.action_dim, (64,), generator=g) if cpu.discrete else torch.rand(64, 1, generator=g) * 2 - 1
        sc, sg = cpu.step(a), gpu.step(a.cuda())
        live = ~sc.done
        torch.testing.assert_close(sg.obs.cpu()[live], sc.obs[live], rtol=1e-6, atol=1e-6)
        gpu.state[sc.done.cuda()] = cpu.state[sc.done].cuda()  # same resets on both


def test_ppo_trains_on_cuda(tmp_path):
    from rung.algos import ppo

    cfg = ppo.Config(env="batched/CartPole-v1", device="cuda", num_envs=512, num_steps=16, num_minibatches=2,
                     total_timesteps=65_536, eval_every=32_768, run_dir=str(tmp_path / "r"))
    result = ppo.train(cfg)
    assert next(result.agent.parameters()).is_cuda
    assert result.summary["eval_mean_return"] > 20
