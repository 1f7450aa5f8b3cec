"""Evaluating a finished (or running) run folder: `rung eval DIR`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rung import algos, checkpoint
from rung.config import OffPolicyConfig, from_dict
from rung.envs.make import make_env
from rung.errors import UserError, missing_dependency
from rung.rollout.evaluate import evaluate
from rung.run import write_json_atomic


def env_normalizes_obs(cfg: Any) -> bool:
    """Whether the run normalised observations in the env (PPO, REINFORCE, bc for PPO). Off-policy
    agents, and bc's clones for SAC, normalise at their own input (ObsNorm) and must be fed raw
    observations."""
    return (bool(getattr(cfg, "normalize_obs", False)) and not isinstance(cfg, OffPolicyConfig)
            and getattr(cfg, "for_algo", "ppo") != "sac")


def load_policy(run_dir: Path, which: str = "best") -> tuple[Any, torch.nn.Module, dict, dict]:
    """(config, agent, normaliser state, checkpoint) from a run folder; `best` falls back to
    `latest` when no evaluation has written one yet."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass a run folder written by 'rung train'")
    path = run_dir / "checkpoints" / f"{which}.pt"
    if which == "best" and not path.exists():
        path = run_dir / "checkpoints" / "latest.pt"
    ck = checkpoint.load(path)
    if "env" not in ck.get("config", {}):
        raise UserError(f"{run_dir} is a language-model run, whose policy acts on text, not in an env; "
                        "'rung eval' scores it on held-out problems")
    module = algos.get(ck["algo"])
    cfg = from_dict(module.Config, ck["config"])
    normalizer = ck["normalizer"] if "normalizer" in ck else ck["ranks"][0]["env"]["normalizer"]
    env = make_env(cfg.env, 1, 0, normalize_obs=env_normalizes_obs(cfg))
    agent = module.make_agent(cfg, env)
    env.close()
    agent.load_state_dict(ck["agent"])
    agent.eval()
    return cfg, agent, normalizer, {"path": path, "step": ck["step"], "algo": ck["algo"]}


@torch.no_grad()
def record_video(cfg: Any, agent: torch.nn.Module, normalizer: dict, path: Path, seed: int) -> Path:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise missing_dependency("imageio", "video") from None
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        # No screen: MuJoCo's default (GLFW) cannot open a window; EGL renders offscreen.
        os.environ["MUJOCO_GL"] = "egl"
    if not os.environ.get("DISPLAY"):
        # pygame (classic control's renderer) draws to a surface it never shows; without a
        # display SDL would print an alarming "XDG_RUNTIME_DIR is invalid" line.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    try:
        # A batched env's policy is filmed in its gymnasium twin, whose dynamics it matches.
        env = make_env(cfg.env.removeprefix("batched/"), 1, seed, normalize_obs=env_normalizes_obs(cfg),
                       render_mode="rgb_array")
        env.normalizer.load_state_dict(normalizer)
        env.normalizer.frozen = True
        obs = env.reset()
        frames = [env.render()]
    except ImportError as e:  # gymnasium's renderers need pygame (classic control) or mujoco
        raise UserError(f"rendering {cfg.env} needs {e.name or 'a renderer'}; install it with: pip install 'rung[video]'") from None
    except Exception as e:
        if "opengl" not in str(e).lower() and "egl" not in str(e).lower():
            raise
        raise UserError(f"MuJoCo could not open an OpenGL context ({str(e).splitlines()[0][:80]}); render offscreen with "
                        "MUJOCO_GL=egl (needs libEGL) or MUJOCO_GL=osmesa (needs the libosmesa6 package)") from None
    while True:
        action = agent.action(obs, deterministic=True)
        step = env.step(action)
        if bool(step.done[0]):
            break
        frames.append(env.render())
        obs = step.obs
    fps = env.envs.envs[0].metadata.get("render_fps", 30)
    env.close()
    try:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    except Exception as e:
        raise UserError(f"could not write {path} ({e}); install the ffmpeg backend with: pip install 'rung[video]'") from None
    return path


def evaluate_run(run_dir: Path, episodes: int, which: str = "best", seed: int = 12345, video: bool = False) -> dict[str, Any]:
    cfg, agent, normalizer, info = load_policy(run_dir, which)
    env = make_env(cfg.env, episodes, 0, normalize_obs=env_normalizes_obs(cfg))
    successes: list[float] = []
    returns = evaluate(agent, env, seed, normalizer, successes=successes)
    env.close()
    result: dict[str, Any] = {
        "algo": info["algo"], "env": cfg.env, "checkpoint": info["path"].stem, "step": info["step"],
        "episodes": episodes, "seed": seed, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
        "returns": returns,
    }
    if successes:
        result["success_rate"] = float(np.mean(successes))
    if video:
        result["video"] = str(record_video(cfg, agent, normalizer, run_dir / "eval.mp4", seed))
    write_json_atomic(run_dir / "eval.json", result)
    return result
