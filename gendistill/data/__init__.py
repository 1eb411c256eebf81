"""Real datasets held in memory (loaders, registry, splits) and their preprocessing (normalisation, ZCA)."""

from .datasets import (
    DatasetSplits,
    RealDataset,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
)
from .preprocessing import ZCA, Preprocessing, fit_zca

__all__ = [
    "DatasetSplits",
    "Preprocessing",
    "RealDataset",
    "ZCA",
    "fit_zca",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_data_root",
]
