import torch
from torch.distributions import Categorical, Normal

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
