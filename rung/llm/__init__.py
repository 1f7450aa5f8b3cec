"""RL on language models: the language model is the policy, a generated sequence the action."""
