"""Causal model families, their streaming state, the causal front end and checkpoints.

One class per family (:data:`rtdenoise.model.config.FAMILIES`), all built on
:class:`rtdenoise.model.streaming.CausalModel`; :class:`ModelConfig` names the family in
``arch`` and is stored whole in every checkpoint.
"""

from rtdenoise.model.config import FAMILIES, ModelConfig

__all__ = ["FAMILIES", "ModelConfig"]
