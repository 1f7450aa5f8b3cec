from rung.nn.actor_critic import ActorCritic, make_actor_critic
from rung.nn.heads import CategoricalHead, GaussianHead
from rung.nn.mlp import mlp

__all__ = ["ActorCritic", "make_actor_critic", "CategoricalHead", "GaussianHead", "mlp"]
