"""Multi-layer perceptrons with the orthogonal initialisation that on-policy methods rely on
(Andrychowicz et al. 2021 found it among the choices that matter most)."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def layer(in_dim: int, out_dim: int, gain: float = math.sqrt(2)) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


def mlp(in_dim: int, hidden: tuple[int, ...], activation: Literal["tanh", "relu", "elu"] = "tanh") -> nn.Sequential:
    """Hidden layers only; heads add the output layer with their own gain."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [layer(in_dim, width), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)
