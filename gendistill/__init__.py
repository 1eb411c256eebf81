"""gendistill: dataset distillation - Minimax diffusion and the classic baselines under one protocol."""

__version__ = "0.1.0"

from .data import DatasetSplits, RealDataset, list_datasets, load_dataset  # noqa: E402
from .errors import GendistillError  # noqa: E402
from .evaluation import PROTOCOLS, EvalProtocol, EvalResult, evaluate, get_protocol  # noqa: E402
from .methods import Distiller, IterativeDistiller, get_method, list_methods, register_method  # noqa: E402
from .nets import create_network, list_networks  # noqa: E402
from .synset import SyntheticSet  # noqa: E402

__all__ = [
    "PROTOCOLS",
    "DatasetSplits",
    "Distiller",
    "EvalProtocol",
    "EvalResult",
    "GendistillError",
    "IterativeDistiller",
    "RealDataset",
    "SyntheticSet",
    "create_network",
    "evaluate",
    "get_method",
    "get_protocol",
    "list_datasets",
    "list_methods",
    "list_networks",
    "load_dataset",
    "register_method",
]
