"""Gemma 4, described once: config.json → ModelSpec (the text decoder as frozen dataclasses), the tensor name table, binding and modality stripping."""

from .binding import Binding, Count, Inventory, bind, inventory_from_spec
from .config import SUPPORTED, load_config, spec_from_config, spec_from_path
from .model import LayerSpec, ModelSpec, RopeSpec, TensorSpec, TextSpec, TowerSpec
from .names import COMPONENTS, TEXT_PREFIXES, TOWER_PREFIXES

__all__ = [
    "Binding", "Count", "Inventory", "bind", "inventory_from_spec", "SUPPORTED", "load_config",
    "spec_from_config", "spec_from_path", "LayerSpec", "ModelSpec", "RopeSpec", "TensorSpec", "TextSpec",
    "TowerSpec", "COMPONENTS", "TEXT_PREFIXES", "TOWER_PREFIXES",
]
