from rung.objectives.advantages import discounted_returns, gae, normalize
from rung.objectives.policy_gradient import entropy_loss, ppo_clip_loss, reinforce_loss, value_loss

__all__ = ["gae", "discounted_returns", "normalize", "ppo_clip_loss", "value_loss", "entropy_loss", "reinforce_loss"]
