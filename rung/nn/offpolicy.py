"""Networks of the off-policy algorithms: Q-networks, critic ensembles, deterministic and
tanh-squashed Gaussian actors, and the agents that bundle them with their target copies.

Initialisation is PyTorch's default (uniform in +-1/sqrt(fan_in)), the choice of the DQN, TD3
and SAC implementations whose published results the presets aim at; the orthogonal init in
mlp.py is an on-policy finding."""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from rung.envs.wrappers import RunningMeanStd
from rung.objectives.q_learning import critic_ensemble_loss

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class ObsNorm(nn.Module):
    """Observation standardisation at the network input, with running statistics that travel in
    the agent's state_dict (so best.pt evaluates as trained). Off-policy methods normalise here
    rather than in the env because the replay buffer must keep raw observations: statistics
    move during training, and HER recomputes rewards from raw goals. Identity when disabled."""

    def __init__(self, obs_dim: int, enabled: bool, clip: float = 10.0):
        super().__init__()
        self.enabled, self.clip = enabled, clip
        self.rms = RunningMeanStd((obs_dim,), device="cpu")
        self.register_buffer("shift", torch.zeros(obs_dim))
        self.register_buffer("inv_std", torch.ones(obs_dim))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        if self.enabled:
            self.rms.update(obs.detach().cpu())
            self.shift.copy_(self.rms.mean)
            self.inv_std.copy_((self.rms.var + 1e-8).rsqrt())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return obs
        return ((obs - self.shift) * self.inv_std).clamp(-self.clip, self.clip)

    def get_extra_state(self):
        return self.rms.state_dict()

    def set_extra_state(self, state) -> None:
        self.rms.load_state_dict(state)


def update_precision(precision: str, device: torch.device):
    """A new context for an update's forward passes: torch.autocast to bfloat16 for bf16-mixed
    (matmuls in bfloat16, parameters float32), nothing for float32. The networks return float32
    either way, so targets, losses and log-probs are never computed in bfloat16."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Float32Out(nn.Sequential):
    """A Sequential whose output is float32 even under bf16 autocast (a no-op otherwise), so
    targets and losses built on it never run in bfloat16. Subclassing keeps the state_dict keys
    of a plain Sequential, and so the checkpoints written before it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).float()


class QEnsemble(nn.Module):
    """n independent Q(s, a) MLPs evaluated as one: each layer is a batched matmul over the
    critics, so two critics cost about what one does in kernel launches (the bottleneck at these
    sizes on CPU and GPU alike)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], n: int = 2):
        super().__init__()
        self.n = n
        sizes = [obs_dim + action_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """(n, B) Q-values. `detach_params` gives gradients to the inputs only: the actor's loss
        needs dQ/da, and computing the critics' own weight gradients there would be wasted work."""
        x = torch.cat([obs, action], -1).unsqueeze(0).expand(self.n, -1, -1)
        weights, biases = list(self.weights), list(self.biases)
        if detach_params:
            weights, biases = [w.detach() for w in weights], [b.detach() for b in biases]
        for w, b in zip(weights[:-1], biases[:-1]):
            x = torch.relu(torch.baddbmm(b, x, w))
        # The output layer as multiply-and-sum rather than a batched matmul with one output
        # column: this CPU build runs that matrix-vector product and the outer product of its
        # backward pass on slow paths (about 0.2 and 0.5 ms for two 256-wide critics at batch
        # 256, against microseconds elementwise), 1.5-2 ms of a 20 ms SAC update.
        return (x * weights[-1].transpose(1, 2)).sum(-1) + biases[-1].squeeze(-1)


class DeterministicActor(nn.Module):
    """mu(s) = low + (tanh(f(s)) + 1) / 2 * (high - low): always inside the action box."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], low, high):
        super().__init__()
        self.net = Float32Out(*plain_mlp([obs_dim, *hidden, action_dim]))
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.scale + self.bias


class SquashedGaussianActor(nn.Module):
    """a = tanh(u) scaled to the action box, u ~ N(mean(s), std(s)) (Haarnoja et al. 2018, app. C).
    Log-probabilities are of the squashed action in [-1, 1], so a target entropy of -action_dim
    means the same for every action range."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], low, high):
        super().__init__()
        self.body = plain_mlp([obs_dim, *hidden])
        self.body.append(nn.ReLU())
        self.mean = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Linear(hidden[-1], action_dim)
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action in the env's box, log-prob of the squashed action), reparameterised. `noise` is
        the standard normal draw, where the caller draws it (a compiled update draws outside the
        graph so that its samples are eager's); by default it is drawn here."""
        h = self.body(obs)
        mean = self.mean(h).float()  # a no-op unless under bf16 autocast
        if deterministic:
            u = mean
            logp = torch.zeros(mean.shape[:-1], device=mean.device)
        else:
            log_std = self.log_std(h).float().clamp(LOG_STD_MIN, LOG_STD_MAX)
            eps = torch.randn_like(mean) if noise is None else noise
            u = mean + log_std.exp() * eps
            # log N(u) - sum log(1 - tanh(u)^2), the latter written stably as
            # 2 * (log 2 - u - softplus(-2u)).
            log_n = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
            log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
            logp = (log_n - log_det).sum(-1)
        return torch.tanh(u) * self.scale + self.bias, logp


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, one fused call over all parameters."""
    t, s = list(target.parameters()), list(source.parameters())
    if tau == 1.0:
        torch._foreach_copy_(t, s)
    else:
        torch._foreach_lerp_(t, s, tau)


def critic_step(qf: nn.Module, critic_opt: torch.optim.Optimizer, o: torch.Tensor, actions: torch.Tensor,
                target: torch.Tensor, precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager critic update shared by sac, td3, ddpg and td3_bc; returns the loss and the mean Q."""
    with update_precision(precision, device):
        q = qf(o, actions)  # (n_critics, B)
    loss = critic_ensemble_loss(q, target)
    critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    critic_opt.step()
    return loss, q.detach().mean()


def functional_critic_loss(qf: nn.Module, precision: str, device: torch.device):
    """critic_step's loss as a function of the critics' parameters, for torch.func in the compiled
    updates of sac and td3; returns (loss, q)."""
    from torch.func import functional_call

    def loss(params, o, actions, target):
        with update_precision(precision, device):
            q = functional_call(qf, params, (o, actions))
        return critic_ensemble_loss(q, target), q

    return loss


class DQNAgent(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden: tuple[int, ...], normalize_obs: bool = False):
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim, normalize_obs)
        self.q = Float32Out(*plain_mlp([obs_dim, *hidden, num_actions]))
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)

    def action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.q(self.obs_norm(obs)).argmax(-1)


class DeterministicAgent(nn.Module):
    """Actor, critics and their target copies: DDPG (one critic) and TD3 (two)."""

    def __init__(self, obs_dim: int, action_dim: int, actor_hidden: tuple[int, ...], critic_hidden: tuple[int, ...],
                 n_critics: int, low, high, normalize_obs: bool = False):
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim, normalize_obs)
        self.actor = DeterministicActor(obs_dim, action_dim, actor_hidden, low, high)
        self.qf = QEnsemble(obs_dim, action_dim, critic_hidden, n_critics)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)

    def action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor(self.obs_norm(obs))

    @torch.no_grad()
    def explore(self, obs: torch.Tensor, noise: float) -> torch.Tensor:
        """mu(s) plus Gaussian noise of std `noise` times the half-range, kept inside the box."""
        mu, scale, bias = self.action(obs), self.actor.scale, self.actor.bias
        return torch.maximum(torch.minimum(mu + noise * scale * torch.randn_like(mu), bias + scale), bias - scale)


class SACAgent(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, actor_hidden: tuple[int, ...], critic_hidden: tuple[int, ...],
                 n_critics: int, low, high, init_alpha: float = 1.0, normalize_obs: bool = False):
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim, normalize_obs)
        self.actor = SquashedGaussianActor(obs_dim, action_dim, actor_hidden, low, high)
        self.qf = QEnsemble(obs_dim, action_dim, critic_hidden, n_critics)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)))

    def action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor(self.obs_norm(obs), deterministic)[0]


def compile_update(step):
    """torch.compile a one-graph gradient step (sac, td3, ddpg --compile). Each run's step closes
    over its own networks, so dynamo guards on them and compiles anew for every run in the same
    process; its default of 8 compiles per function would make the ninth run there (tests, sweeps,
    population training) fail under fullgraph. The limit is raised, not the guards dropped."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)
    return torch.compile(step, fullgraph=True, dynamic=False)
