"""One evaluation protocol for every method: protocol presets and their registry, the shared training loop,
:func:`evaluate`, the set-quality report and result tables.

Nothing here imports a method: a set records its default protocol, and methods register their own protocols
(found through the method entry points, see :mod:`gendistill.utils.plugins`).
"""

from gendistill.evaluation.evaluate import EvalResult, evaluate
from gendistill.evaluation.protocols import (
    CUSTOM_EVALUATORS,
    PROTOCOL_ALIASES,
    PROTOCOLS,
    EvalProtocol,
    default_protocol,
    get_protocol,
    protocol_names,
    register_evaluator,
    register_protocol,
    resolve_protocol,
)
from gendistill.evaluation.trainer import split_accuracy, train_network

__all__ = ["CUSTOM_EVALUATORS", "PROTOCOLS", "PROTOCOL_ALIASES", "EvalProtocol", "EvalResult", "default_protocol",
           "evaluate", "get_protocol", "protocol_names", "register_evaluator", "register_protocol",
           "resolve_protocol", "split_accuracy", "train_network"]
