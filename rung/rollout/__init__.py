from rung.rollout.collect import collect_rollout
from rung.rollout.evaluate import evaluate
from rung.rollout.storage import RolloutStorage

__all__ = ["RolloutStorage", "collect_rollout", "evaluate"]
