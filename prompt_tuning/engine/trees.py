"""Parameter trees as flat dicts keyed by '/'-joined paths, and back.

Parameter groups, checkpoint import, the train state and exports all name parameters by their
'/'-joined path (e.g. 'encoder/layers_0/mlp/wo/kernel'); this is the one conversion they share.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import flax
from flax import traverse_util


def flat(tree: Any) -> Dict[str, Any]:
  """'/'-joined paths -> leaves (FrozenDicts are read as dicts)."""
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def unflat(flat_tree: Mapping[str, Any]) -> Dict[str, Any]:
  """The inverse of `flat`: nested dicts."""
  return traverse_util.unflatten_dict(dict(flat_tree), sep="/")
