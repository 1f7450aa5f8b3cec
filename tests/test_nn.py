import typing

import pytest
import torch
from torch.distributions import Categorical, Normal

from rung.algos import ppo
from rung.cli import _converter
from rung.envs.batched import make
from rung.errors import UserError
from rung.nn import ActorCritic
from rung.nn.heads import CategoricalHead, GaussianHead


def test_categorical_head_matches_torch_distributions():
    logits = torch.randn(6, 3)
    logp = torch.log_softmax(logits, -1)
    actions = torch.tensor([0, 1, 2, 2, 1, 0])
    ref = Categorical(logits=logits)
    torch.testing.assert_close(CategoricalHead.log_prob(logp, actions), ref.log_prob(actions))
    torch.testing.assert_close(CategoricalHead.entropy(logp), ref.entropy())
    assert CategoricalHead.sample(logp, deterministic=True).tolist() == logits.argmax(-1).tolist()


def test_categorical_sampling_draws_what_multinomial_draws():
    # The written-out sample must be torch.multinomial's one-sample path: the same actions from
    # the same generator state, and the generator left where multinomial leaves it.
    logp = torch.log_softmax(torch.randn(500, 5) * 3, -1)
    torch.manual_seed(3)
    ref, ref_next = torch.multinomial(logp.exp(), 1).squeeze(-1), torch.rand(3)
    torch.manual_seed(3)
    got, got_next = CategoricalHead.sample(logp), torch.rand(3)
    assert torch.equal(got, ref) and torch.equal(got_next, ref_next)
    assert len(set(got.tolist())) == 5  # it did sample, not take the argmax


def test_gaussian_head_matches_torch_distributions():
    mean, log_std = torch.randn(5, 2), torch.randn(5, 2) * 0.3
    actions = torch.randn(5, 2)
    ref = Normal(mean, log_std.exp())
    torch.testing.assert_close(GaussianHead.log_prob((mean, log_std), actions), ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(GaussianHead.entropy((mean, log_std)), ref.entropy().sum(-1))
    assert torch.equal(GaussianHead.sample((mean, log_std), deterministic=True), mean)


def test_actor_critic_act_and_evaluate_agree():
    for discrete, adim in ((True, 3), (False, 2)):
        torch.manual_seed(0)
        ac = ActorCritic(4, adim, discrete)
        obs = torch.randn(7, 4)
        action, logp, value = ac.act(obs)
        assert action.shape == ((7,) if discrete else (7, adim)) and logp.shape == (7,) and value.shape == (7,)
        logp2, ent, value2 = ac(obs, action)
        torch.testing.assert_close(logp, logp2)
        torch.testing.assert_close(value, value2)
        assert ent.shape == (7,)


def test_adam_step_written_out_equals_torch_adam_and_shares_its_state():
    """adam_step_ (the compiled SAC update's optimiser) moves weights as torch's fused Adam does,
    on the same state tensors: steps by either one can alternate, and the state_dict is torch's."""
    from rung.nn.optim import adam, adam_state, adam_step_

    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt, my_opt = adam(ref, 1e-2), adam(mine, 1e-2)
    grads = [[torch.randn_like(p) for p in ref] for _ in range(4)]
    for i, g in enumerate(grads):
        for p, gi in zip(ref, g):
            p.grad = gi
        ref_opt.step()
        if i == 2:  # torch's own step on the state adam_state made
            for p, gi in zip(mine, g):
                p.grad = gi
            my_opt.step()
        else:
            group = my_opt.param_groups[0]
            with torch.no_grad():
                adam_step_(adam_state(my_opt), g, group["lr"], group["betas"], group["eps"])
    for p, q in zip(ref, mine):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    a, b = ref_opt.state_dict()["state"], my_opt.state_dict()["state"]
    for i in a:
        assert a[i].keys() == b[i].keys() and float(b[i]["step"]) == 4
        for k in a[i]:
            torch.testing.assert_close(a[i][k], b[i][k], rtol=1e-6, atol=1e-7)


def test_a_linear_actor_keeps_the_critics_hidden_layers():
    flag = _converter("actor_hidden_sizes", typing.get_type_hints(ppo.Config)["actor_hidden_sizes"])
    cfg = ppo.Config(env="batched/CartPole-v1", hidden_sizes=(32, 16), actor_hidden_sizes=flag("0"))
    cfg.validate()
    agent = ppo.make_agent(cfg, make("CartPole-v1", num_envs=3))
    # Logits are an affine function of the observation: the head reads it directly.
    assert len(agent.actor_body) == 0 and agent.head.logits.in_features == 4
    assert [m.out_features for m in agent.critic.modules() if isinstance(m, torch.nn.Linear)] == [32, 16, 1]
    obs = torch.randn(5, 4)
    w, b = agent.head.logits.weight, agent.head.logits.bias
    assert torch.allclose(agent.dist_params(obs), torch.log_softmax(obs @ w.T + b, -1))
    # None follows hidden_sizes; other widths give the actor its own layers.
    assert ppo.make_agent(ppo.Config(hidden_sizes=(8,)), make("CartPole-v1", 1)).head.logits.in_features == 8
    own = ppo.make_agent(ppo.Config(hidden_sizes=(8,), actor_hidden_sizes=(5, 6)), make("CartPole-v1", 1))
    assert own.head.logits.in_features == 6 and own.critic[1].in_features == 8


def test_bad_actor_widths_are_refused_in_one_line():
    for bad in [(64, 0), (-3,)]:
        with pytest.raises(UserError, match="--actor-hidden-sizes must be positive widths such as 64,64, or 0"):
            ppo.Config(actor_hidden_sizes=bad).validate()
