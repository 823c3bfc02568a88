"""Frozen alignment operators fitted from unpaired text and image statistics.

Importing this package registers every built-in method.
"""

from revision_plugin.align import blockwise, c3, identity, mean_shift, realign  # noqa: F401  (registration)
from revision_plugin.align.artifact import read_operator_info
from revision_plugin.align.base import (
    OPERATOR_CONFIG_NAME,
    OPERATOR_REGISTRY,
    OPERATOR_WEIGHTS_NAME,
    FitContext,
    Operator,
    OperatorInfo,
    fit_operator,
    get_operator_class,
    load_operator,
    register_operator,
    train_mode,
)
from revision_plugin.align.sources import ArraySource, NpySource, open_source
from revision_plugin.align.stats import MomentStats

__all__ = [
    "OPERATOR_CONFIG_NAME",
    "OPERATOR_REGISTRY",
    "OPERATOR_WEIGHTS_NAME",
    "ArraySource",
    "FitContext",
    "MomentStats",
    "NpySource",
    "Operator",
    "OperatorInfo",
    "fit_operator",
    "get_operator_class",
    "load_operator",
    "open_source",
    "read_operator_info",
    "register_operator",
    "train_mode",
]
