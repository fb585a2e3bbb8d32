"""Gemma 4, described once: config.json → ModelSpec (the text decoder as frozen dataclasses, each per-layer fact derived by one function of ``geometry``), the tensor name table and roles (the tied head included), binding and modality stripping."""

from . import geometry
from .binding import Binding, Count, Inventory, bind, inventory_from_spec
from .config import SUPPORTED, load_config, spec_from_config, spec_from_path
from .model import CacheSpec, LayerSpec, ModelSpec, RopeSpec, TensorSpec, TextSpec, TowerSpec
from .names import COMPONENTS, TEXT_PREFIXES, LM_HEAD, TOWER_PREFIXES, role_of, tensor_of, text_tensors

__all__ = [
    "geometry", "Binding", "Count", "Inventory", "bind", "inventory_from_spec", "SUPPORTED", "load_config",
    "spec_from_config", "spec_from_path", "CacheSpec", "LayerSpec", "ModelSpec", "RopeSpec", "TensorSpec",
    "TextSpec", "TowerSpec", "COMPONENTS", "TEXT_PREFIXES", "LM_HEAD", "TOWER_PREFIXES", "role_of", "tensor_of",
    "text_tensors",
]
