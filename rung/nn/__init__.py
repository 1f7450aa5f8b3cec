from rung.nn.actor_critic import ActorCritic
from rung.nn.heads import CategoricalHead, GaussianHead
from rung.nn.mlp import mlp

__all__ = ["ActorCritic", "CategoricalHead", "GaussianHead", "mlp"]
