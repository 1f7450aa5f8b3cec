"""The algorithm registry: name -> module with `Config`, `train(cfg)` and `make_agent(cfg, env)`.
Modules are imported on first use so that `rung list` and errors stay fast."""

from __future__ import annotations

import importlib
from types import ModuleType

from rung.errors import UserError

ALGOS: dict[str, str] = {
    "ppo": "PPO, clipped surrogate objective (discrete and continuous actions)",
    "reinforce": "REINFORCE with a learned baseline (discrete and continuous actions)",
    "dqn": "DQN with double-Q targets and a target network (discrete actions)",
    "ddpg": "DDPG, deterministic actor-critic (continuous actions)",
    "td3": "TD3, twin critics, delayed actor, target smoothing (continuous actions)",
    "sac": "Soft Actor-Critic with automatic entropy tuning (continuous actions; --her for goal envs)",
    "bc": "Behaviour cloning from a dataset into PPO's policy network (discrete and continuous actions)",
    "td3_bc": "TD3+BC, offline RL from a dataset: TD3 with a behaviour-cloning term (continuous actions)",
    "grpo": "GRPO on a language model: group-relative advantages, clipped token loss (--model, --task)",
    "sft": "Supervised fine-tuning of a language model on prompt/response pairs (--dataset, or a task's answers)",
    "reinforce_llm": "REINFORCE on a language model with a leave-one-out (RLOO) baseline (--model, --task)",
    "ppo_llm": "PPO on a language model: value head, per-token KL rewards, GAE, clipped losses (--model, --task)",
}


def get(name: str) -> ModuleType:
    if name not in ALGOS:
        raise UserError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGOS)} (see 'rung list')")
    return importlib.import_module(f"rung.algos.{name}")
