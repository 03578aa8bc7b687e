"""Names the networks accept, kept free of torch so configuration checks and CLI help can
list them without importing it."""

from __future__ import annotations

ACTIVATION_NAMES = ("elu", "gelu", "leaky_relu", "relu", "silu", "tanh")
ARCHITECTURES = ("conv", "gru")  # sequence networks: 1-D convolutions or a GRU
