from rung.objectives.actor_losses import deterministic_policy_loss, sac_policy_loss, temperature_loss
from rung.objectives.advantages import discounted_returns, gae, normalize
from rung.objectives.imitation import (
    bc_discrete_loss,
    bc_gaussian_nll_loss,
    bc_mse_loss,
    decayed_coef,
    kl_categorical,
    kl_diag_gaussian,
    td3_bc_actor_loss,
)
from rung.objectives.llm import (
    Aggregation,
    KLEstimator,
    clipped_token_pg_loss,
    group_advantages,
    kl_penalty,
    masked_aggregate,
    masked_whiten,
    process_advantages,
    reinforce_token_loss,
    rloo_advantages,
    sft_loss,
    token_gae,
    token_rewards,
)
from rung.objectives.policy_gradient import entropy_loss, ppo_clip_loss, reinforce_loss, value_loss
from rung.objectives.q_learning import (
    clipped_double_q_target,
    critic_ensemble_loss,
    dqn_target,
    smoothed_target_action,
    soft_q_target,
    td_loss,
)

__all__ = ["gae", "discounted_returns", "normalize", "ppo_clip_loss", "value_loss", "entropy_loss", "reinforce_loss",
           "dqn_target", "td_loss", "clipped_double_q_target", "critic_ensemble_loss", "smoothed_target_action", "soft_q_target",
           "deterministic_policy_loss", "sac_policy_loss", "temperature_loss", "bc_discrete_loss", "bc_gaussian_nll_loss",
           "bc_mse_loss", "td3_bc_actor_loss", "kl_categorical", "kl_diag_gaussian", "decayed_coef",
           "Aggregation", "KLEstimator", "group_advantages", "process_advantages", "rloo_advantages", "masked_aggregate",
           "clipped_token_pg_loss", "kl_penalty", "token_rewards", "token_gae", "masked_whiten",
           "reinforce_token_loss", "sft_loss"]
