"""quant: the format registry (ranges, packing, bytes, LiteRT types), recipes (ordered rules →
configs), presets, kernels (affine, dictionary) and precomputed scale sources (compressed-tensors,
QAT sidecar, grid recovery)."""

from .config import (AffineConfig, DictionaryConfig, Granularity, KVCacheConfig, KVGranularity,
                     ScaleDType)
from .formats import FORMATS, Format, format_of, pack, qrange, unpack
from .grid import GridRecovery, recover_grid_scales
from .kernels import QuantizedTensor, compute_scales, dequantize, from_codes, quantize
from .kernels_dict import DictionaryQuantizer, DictionaryTensor, codebook_thresholds
from .presets import PRESETS, load_recipe
from .recipe import (Recipe, Rule, canonical_roles, recipe_from_json, recipe_to_json, resolve,
                     resolve_shared)
from .scales import (CTConfig, CTWeight, QatSidecar, parse_ct_config, read_ct_weight,
                     read_qat_sidecar, write_qat_sidecar)

__all__ = [
    "AffineConfig", "DictionaryConfig", "Granularity", "KVCacheConfig", "KVGranularity",
    "ScaleDType", "FORMATS", "Format", "format_of", "GridRecovery", "recover_grid_scales", "QuantizedTensor", "compute_scales",
    "dequantize", "from_codes", "pack", "qrange", "quantize", "unpack", "DictionaryQuantizer",
    "DictionaryTensor", "codebook_thresholds", "PRESETS", "load_recipe", "Recipe", "Rule",
    "canonical_roles", "recipe_from_json", "recipe_to_json", "resolve", "resolve_shared", "CTConfig", "CTWeight",
    "QatSidecar", "parse_ct_config", "read_ct_weight", "read_qat_sidecar", "write_qat_sidecar",
]
