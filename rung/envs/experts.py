"""Scripted experts: a few lines of control each, to record demonstrations without training first.

Each expert is a plain function `obs (N, obs_dim) tensor -> actions`: int64 (N,) for a Discrete
env, float32 (N, act_dim) for a Box env. They are meant to be read and changed; the return each
reaches is written in its docstring, measured with `collect(env_id, expert, 20, seed=0,
num_envs=4)` from rung.buffers.demos (the same as `rung collect ... --num-envs 4`). They are not all optimal,
on purpose: imitation can only copy what it is shown, and a demonstrator with room above it is
what RL fine-tuning after behaviour cloning has to improve on.

Record demonstrations with: rung collect --env CartPole-v1 --policy expert --episodes 20 -o demos.npz
"""

from __future__ import annotations

from typing import Callable

import torch

from rung.errors import UserError

Expert = Callable[[torch.Tensor], torch.Tensor]


def cartpole(obs: torch.Tensor) -> torch.Tensor:
    """CartPole-v1: push the cart under the pole. Reaches 500 (the maximum) over 20 episodes, seed 0.

    obs = (x, x_dot, theta, theta_dot); action 1 pushes right. Pushing towards the side the pole
    falls to, with the angular velocity as a damping term, balances it; the small position and
    velocity terms stop the cart from drifting off the track over 500 steps."""
    x, x_dot, theta, theta_dot = obs.unbind(-1)
    return (theta + 0.5 * theta_dot + 0.05 * x + 0.1 * x_dot > 0).long()


# Pendulum-v1's dynamics are theta'' = 3g/(2l) sin(theta) + 3/(m l^2) u with g=10, m=l=1 and
# theta=0 upright, so E = theta'^2/2 + 15 (cos(theta) - 1) is conserved without torque, equals 0
# upright at rest, and changes as dE/dt = 3 u theta'.
PENDULUM_GRAVITY = 15.0


def pendulum(obs: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1: energy-based swing-up, then a PD controller near upright. Reaches about -126
    over 20 episodes, seed 0: near the best possible, the episodes that start hanging almost still
    costing most (about -250 to -370).

    obs = (cos theta, sin theta, theta_dot); action is a torque in [-2, 2]. Far from upright, the
    torque follows the angular velocity while the energy is below that of standing still upright
    (E < 0) and opposes it above, so each swing goes higher until the pendulum arrives near the
    top almost at rest. Within about 25 degrees of upright a PD law holds it there."""
    cos, sin, vel = obs.unbind(-1)
    angle = torch.atan2(sin, cos)
    energy = 0.5 * vel**2 + PENDULUM_GRAVITY * (cos - 1.0)
    # sign(0) would be 0 at rest hanging down, where the pendulum must be kicked to start swinging.
    direction = torch.where(vel >= 0, 1.0, -1.0)
    swing = -energy * direction
    hold = -(10.0 * angle + 2.0 * vel)
    torque = torch.where(cos > 0.9, hold, swing)
    return torque.clamp(-2.0, 2.0).unsqueeze(-1).float()


def mountain_car(obs: torch.Tensor) -> torch.Tensor:
    """MountainCar-v0: push in the direction the car moves. Reaches about -118 over 20 episodes,
    seed 0: deliberately short of optimal (well-trained agents reach about -100 to -110).

    obs = (position, velocity); actions 0 push left, 1 nothing, 2 push right. Pushing along the
    velocity pumps energy into the swing, so the car always gets out, but not by the shortest
    route: when to switch depends on where the car is on the hill, which this rule ignores. Left
    as is so that an agent cloned from it has something for RL to improve."""
    velocity = obs[..., 1]
    return torch.where(velocity >= 0, 2, 0).long()


# make_env flattens FetchReach's dict observation as observation (10) | achieved_goal (3) |
# desired_goal (3); see rung.envs.make.GOAL_KEYS.
FETCH_ACHIEVED = slice(10, 13)
FETCH_DESIRED = slice(13, 16)


def fetch_reach(obs: torch.Tensor, gain: float = 10.0) -> torch.Tensor:
    """FetchReach-v4: move the gripper straight at the goal. Reaches about -2.3 with success 1.0
    over 20 episodes, seed 0 (the return counts the steps before the gripper is within 5 cm).

    The action moves the gripper by 5 cm per unit, so a gain of 10 closes half of the remaining
    distance each step without overshooting; the gripper's own (fourth) action stays 0."""
    error = obs[..., FETCH_DESIRED] - obs[..., FETCH_ACHIEVED]
    move = (gain * error).clamp(-1.0, 1.0)
    return torch.cat([move, torch.zeros_like(move[..., :1])], dim=-1).float()


EXPERTS: dict[str, Expert] = {
    "CartPole-v1": cartpole,
    "Pendulum-v1": pendulum,
    "MountainCar-v0": mountain_car,
    "FetchReach-v4": fetch_reach,
}


def get_expert(env_id: str) -> Expert:
    """The scripted expert for `env_id`; a batched env shares its gymnasium twin's expert,
    whose dynamics it matches."""
    expert = EXPERTS.get(env_id.removeprefix("batched/"))
    if expert is None:
        raise UserError(f"no scripted expert for {env_id!r}; experts exist for {', '.join(EXPERTS)}, "
                        "or pass --policy RUN_DIR to record a trained run")
    return expert
