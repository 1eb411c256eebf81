"""The one synthetic-set format (:class:`SyntheticSet`: safetensors + JSON), its decoders (e.g. IDC's
multi-formation) and importers of other repositories' files (:mod:`gendistill.synset.interop`)."""

from .decoders import DECODERS, decode, multiformation, multiformation_factor, normalised_grey, register_decoder
from .format import (
    SCHEMA_VERSION,
    SyntheticSet,
    check_ipc,
    environment_meta,
    imagefolder_names,
    resolve_synset_dir,
    save_grid,
)
from .interop import IMPORTERS, import_dc_pt, import_kip_npz, import_mtt_dir

__all__ = [
    "DECODERS",
    "IMPORTERS",
    "SCHEMA_VERSION",
    "SyntheticSet",
    "check_ipc",
    "decode",
    "environment_meta",
    "imagefolder_names",
    "import_dc_pt",
    "import_kip_npz",
    "import_mtt_dir",
    "multiformation",
    "multiformation_factor",
    "normalised_grey",
    "register_decoder",
    "resolve_synset_dir",
    "save_grid",
]
