from rung.envs.make import GymVecEnv, make_env, env_threshold

__all__ = ["GymVecEnv", "make_env", "env_threshold"]
