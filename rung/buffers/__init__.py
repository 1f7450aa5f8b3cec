"""Replay storage for off-policy algorithms."""

from rung.buffers.her import HerReplayBuffer
from rung.buffers.replay import ReplayBuffer, Transitions

__all__ = ["HerReplayBuffer", "ReplayBuffer", "Transitions"]
