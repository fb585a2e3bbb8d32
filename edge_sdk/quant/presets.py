"""Built-in recipes (float, int8, int4, mobile) and ``load_recipe`` (preset name or JSON path).

``recipes/mobile.json`` is ``recipe_to_json(PRESETS["mobile"])``, kept as an example users can
copy and edit; a test keeps it equal to the preset.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from ..errors import RecipeError
from .config import AffineConfig, DictionaryConfig, KVCacheConfig
from .recipe import Recipe, Rule, recipe_from_json

ATTN = r"layers\.\d+\.self_attn\.[qkvo]_proj"
MLP = r"layers\.\d+\.mlp\.(gate|up|down)_proj"
PLE_LINEAR = r"per_layer_model_projection|layers\.\d+\.(per_layer_input_gate|per_layer_projection)"
EMBED = r"embed_tokens|lm_head"  # one tied tensor: both roles must resolve alike
PLE_TABLE = r"embed_tokens_per_layer"
LINEAR = f"{ATTN}|{MLP}|{PLE_LINEAR}"
EXPERTS = r"layers\.\d+\.experts\.(gate_up|down)_proj"   # MoE (26B-A4B): per expert and output row
FLOAT_KEEP = r"norm|per_layer_projection_norm|layers\.\d+\.(.*norm|layer_scalar)"

INT8_CH = AffineConfig(bits=8, granularity="channel")
INT4_CH = AffineConfig(bits=4, granularity="channel")
INT4_B32 = AffineConfig(bits=4, granularity="block", block_size=32)
INT2_CH = AffineConfig(bits=2, granularity="channel")
KV_INT8 = KVCacheConfig(bits=8, granularity="token_head")

# PLE table (E2B 262144×8960): one 16-entry float32 codebook per 64 rows = 4096 codebooks,
# 256 KiB in all (0.02 % of the 1.17 GB of 4-bit codes; a codebook per row would be 16 MiB,
# 1.4 %). A looked-up row touches one 64-byte codebook, and a group still holds 573k values,
# plenty for 16 centroids.
PLE_DICT = DictionaryConfig(index_bits=4, codebook_size=16, rows_per_codebook=64, mapped=True)

FLOAT = Recipe("float", (), KVCacheConfig(bits=32))

INT8 = Recipe("int8", (
    Rule(LINEAR, INT8_CH),
    Rule(f"{EMBED}|{PLE_TABLE}", INT8_CH),
    Rule(EXPERTS, INT8_CH),
    Rule(FLOAT_KEEP, None),
), KV_INT8)

INT4 = Recipe("int4", (
    Rule(LINEAR, INT4_B32),
    Rule(f"{EMBED}|{PLE_TABLE}", INT4_CH),  # per row: one scale per token
    Rule(EXPERTS, INT4_CH),   # blockwise scales are not carried by the expert GATHER (quant/plan.py)
    Rule(FLOAT_KEEP, None),
), KV_INT8)

MOBILE = Recipe("mobile", (
    Rule(MLP, INT2_CH),
    Rule(ATTN, INT4_CH),
    Rule(PLE_LINEAR, INT8_CH),
    Rule(EMBED, INT4_CH),
    Rule(PLE_TABLE, PLE_DICT),
    Rule(EXPERTS, INT4_CH),   # int2 cannot be GATHERed in LiteRT: experts stay int4 per channel
    Rule(FLOAT_KEEP, None),
), KV_INT8)

PRESETS: dict[str, Recipe] = {r.name: r for r in (FLOAT, INT8, INT4, MOBILE)}

RECIPES_DIR = Path(__file__).with_name("recipes")


def load_recipe(name_or_path: str | PathLike) -> Recipe:
    """A preset by name (float, int8, int4, mobile), else a recipe JSON file."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(name_or_path)
    if not path.is_file():
        raise RecipeError(f"no preset or recipe file named {key!r}",
                          fix=f"use one of {', '.join(PRESETS)} or a path to a recipe .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe: {e}", path=path) from None
    return recipe_from_json(text, source=path)
