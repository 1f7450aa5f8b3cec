"""BaseConfig and RunConfig: the fields every algorithm shares, and their validation.

Configs are plain dataclasses. Each field carries a docstring (read by the CLI for --help) and
choices are `Literal`s. Values are checked by `validate()`, which raises `UserError` naming the
field and the fix; derived values are properties and are never written after parsing.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import textwrap
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from rung.errors import UserError


@dataclass
class BaseConfig:
    """What every run has, env or not: its seed, folder, device and checkpoint cadence. Env
    algorithms extend it as RunConfig, language-model ones as rung.llm.config.LLMConfig."""

    seed: int = 1
    """Seeds python, numpy, torch and the environments; a CPU run is reproducible from it."""
    run_dir: str | None = None
    """Run folder; default runs/<env, or task-model>__<algo>__<seed>__<time>."""
    torch_threads: int = 1
    """Threads for torch on CPU; small MLPs run fastest on one. 0 keeps torch's default."""
    device: str = "cpu"
    """Torch device for the networks: cpu, cuda, or cuda:N."""
    checkpoint_every: int = 10
    """Write checkpoints/latest.pt every this many iterations (and always at the end)."""
    log_every: int = 1
    """Write a metrics line every this many iterations."""

    @property
    def subject(self) -> str:
        """What the run learns in, for messages and default folder names."""
        raise NotImplementedError

    @property
    def budget(self) -> int:
        """The step count the run trains for, on its own step axis."""
        raise NotImplementedError

    @property
    def budget_text(self) -> str:
        """The budget as the run's first line states it."""
        return f"{self.budget:,} steps"

    @property
    def solved_threshold(self) -> float | None:
        """The evaluation return that counts as solved, or None for a run judged otherwise
        (language-model runs report their task's accuracy instead)."""
        return None

    def validate(self) -> None:
        positive(self, "checkpoint_every", "log_every")
        non_negative(self, "seed", "torch_threads")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # inf and nan pass every "> 0" check, then turn a run's losses or targets into nan.
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{flag(f.name)} must be a finite number, got {value}")
        check_choices(self)
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UserError(f"--device {self.device!r} is not a device; use cpu, cuda or cuda:N")


@dataclass
class RunConfig(BaseConfig):
    env: str = "CartPole-v1"
    """Gymnasium environment id."""
    randomize: str = ""
    """Domain randomisation for batched envs, resampled at each episode start: NAME=LOW:HIGH,...
    (e.g. pole_length=0.4:0.6,gravity=9.0:10.6). Evaluation uses the nominal parameters."""
    total_timesteps: int = 100_000
    """Environment steps to train for, summed over all envs (and all processes under torchrun)."""
    compile: bool = False
    """torch.compile the batched env's step and the networks (on-policy algorithms), or each gradient
    step as one graph (sac, td3, ddpg); the first iterations pay the compile time (measured in bench/batched.py
    and bench/offpolicy.py)."""
    eval_every: int = 10_000
    """Evaluate the deterministic policy every this many env steps (0 disables periodic evaluation)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    target_return: float | None = None
    """Eval return that counts as solved; default is the env's registered reward threshold."""
    target_success_rate: float | None = None
    """Eval success rate that counts as solved, for envs that report success (goal-conditioned
    envs such as FetchReach-v4); used where no return threshold applies."""
    stop_when_solved: bool = False
    """End the run at the first periodic evaluation at or above the target."""

    @property
    def subject(self) -> str:
        return self.env

    @property
    def budget(self) -> int:
        return self.total_timesteps

    @property
    def solved_threshold(self) -> float | None:
        from rung.envs.make import env_threshold

        return self.target_return if self.target_return is not None else env_threshold(self.env)

    def validate(self) -> None:
        super().validate()
        positive(self, "total_timesteps", "eval_episodes")
        non_negative(self, "eval_every")
        # Here, before Run creates the run folder: a mistyped id must not leave an empty run behind.
        from rung.envs.make import check_env_id

        check_env_id(self.env)
        if self.target_success_rate is not None:
            in_range(self, "target_success_rate", 0.0, 1.0)
        if self.randomize:
            from rung.envs.batched import ENVS, PREFIX, parse_randomize

            ranges = parse_randomize(self.randomize)
            if not self.env.startswith(PREFIX):
                raise UserError(f"--randomize needs a batched env such as batched/{self.env}; {self.env} is a gymnasium env")
            ENVS[self.env.removeprefix(PREFIX)].check_randomize(ranges)


def positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise UserError(f"--{flag(name)} must be > 0, got {value}")


def non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0:
            raise UserError(f"--{flag(name)} must be >= 0, got {value}")


def learns_from_a_dataset(cfg: Any, algo: str) -> None:
    """Refuse the env flags of an algorithm that steps its env only to evaluate (with the
    nominal parameters, uncompiled), rather than record them as if they had been applied."""
    if cfg.randomize:
        raise UserError(f"{algo} learns from a dataset and steps its env only to evaluate, with the nominal "
                        "parameters; drop --randomize")
    if cfg.compile:
        raise UserError(f"--compile is not supported by {algo}; leave it off")


def widths(cfg: Any, name: str, linear_ok: bool = False) -> None:
    """Hidden widths must be positive. With `linear_ok`, 0 (or none) may stand for no hidden layer."""
    value = getattr(cfg, name)
    if linear_ok and tuple(value) in ((), (0,)):
        return
    if not value or min(value) <= 0:
        linear = ", or 0 for a linear actor" if linear_ok else ""
        raise UserError(f"--{flag(name)} must be positive widths such as 64,64{linear}; got {value}")


def in_range(cfg: Any, name: str, low: float, high: float) -> None:
    value = getattr(cfg, name)
    if not low <= value <= high:
        raise UserError(f"--{flag(name)} must be in [{low}, {high}], got {value}")


def check_choices(cfg: Any) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = literal_choices(hints[f.name])
        if choices and getattr(cfg, f.name) not in choices:
            raise UserError(f"--{flag(f.name)} must be one of {', '.join(map(str, choices))}; got {getattr(cfg, f.name)!r}")


def flag(name: str) -> str:
    return name.replace("_", "-")


def literal_choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return None


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field), collected along the MRO."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown config field(s) {', '.join(unknown)} for {cls.__module__}; remove them from the config")
    return cls(**values)


@dataclass
class OffPolicyConfig(RunConfig):
    """The knobs every replay-based algorithm shares (DQN, DDPG, TD3, SAC). An iteration is one
    step of all envs, so log_every and checkpoint_every count env steps per env here."""

    # Not a field: whether the algorithm has a compiled update for --compile.
    compiled_update = False

    num_envs: int = 1
    """Parallel environments; each iteration steps all of them once."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions; the memory is allocated (and checked) at the start."""
    batch_size: int = 256
    """Transitions per gradient step."""
    learning_starts: int = 100
    """Env steps of uniformly random actions before learning begins."""
    train_freq: int = 1
    """Update every this many iterations."""
    gradient_steps: int = 1
    """Gradient steps per update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target networks (1.0 copies them outright)."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    normalize_obs: bool = False
    """Standardise observations at the network input with running statistics (saved with the
    agent); the replay buffer keeps them raw."""
    save_buffer: bool = False
    """Put the replay buffer in checkpoints, so a resumed run continues exactly (files get large);
    without it a resumed run refills the buffer with its current policy (learning_starts transitions,
    at least a batch) before updating again."""
    her: bool = False
    """Hindsight experience replay for goal-conditioned envs (Fetch*): relabel goals with ones reached later."""
    her_strategy: Literal["future", "final", "episode"] = "future"
    """Where relabelled goals come from in the episode."""
    her_n_sampled_goal: int = 4
    """Relabelled samples per real one (a fraction k/(k+1) of each batch)."""
    precision: Literal["float32", "bf16-mixed"] = "float32"
    """Matrix products of the updates' forward passes in bfloat16 (bf16-mixed: weights, gradients,
    optimizer state, targets and losses stay float32), about twice the matmul speed on CPUs with
    native bfloat16 (AVX512-BF16, AMX) and on recent GPUs; acting and evaluation stay float32."""
    eval_every: int = 5_000
    log_every: int = 1_000
    checkpoint_every: int = 10_000

    def validate(self) -> None:
        super().validate()
        positive(self, "num_envs", "buffer_size", "batch_size", "train_freq", "gradient_steps", "learning_rate",
                 "her_n_sampled_goal")
        non_negative(self, "learning_starts")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "tau", 0.0, 1.0)
        if self.tau == 0:
            raise UserError("--tau 0 would freeze the target networks; use a value in (0, 1]")
        if self.compile and not self.compiled_update:
            raise UserError("--compile is supported by sac, td3 and ddpg among the off-policy algorithms; leave it off")
        last_step = self.total_timesteps // self.num_envs * self.num_envs
        if not hasattr(self, "dataset") and last_step < max(self.learning_starts, self.batch_size):
            # Updates start once the step count reaches learning_starts and the buffer holds a
            # batch: below both, every action would be random and the "trained" policy its
            # initialisation (PPO refuses a budget under one rollout alike).
            raise UserError(f"--total-timesteps {self.total_timesteps} never reaches --learning-starts "
                            f"{self.learning_starts} and --batch-size {self.batch_size}, so no gradient step would "
                            "run; raise it or lower those")
