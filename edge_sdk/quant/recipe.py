"""Recipes: ordered rules from canonical tensor roles to quantization configs, and their JSON.

A role is the text decoder's HF tensor name without prefix and ``.weight``
(``layers.3.mlp.down_proj``), plus ``lm_head`` for the tied LM head. A rule's pattern is a
regex that must match the whole role; the LAST matching rule wins; no match keeps float.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from os import PathLike

from ..errors import RecipeError
from ..gemma4.names import recipe_roles
from .config import (CONFIG_TYPES, WEIGHT_TAGS, KVCacheConfig, QuantConfig, check_keys,
                     config_from_dict, config_to_dict)

FORMAT = "edge_sdk.recipe"
VERSION = 1


def canonical_roles(num_layers: int) -> tuple[str, ...]:
    """Every canonical role of a decoder with ``num_layers`` layers (the name table's,
    ``gemma4.names``), the mixture-of-experts roles included (docs/moe.md)."""
    return recipe_roles(num_layers, moe=True)


@dataclass(frozen=True)
class Rule:
    """``pattern`` (regex, full match on a role) → ``config``; ``None`` keeps the tensor float."""

    pattern: str
    config: QuantConfig | None

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise RecipeError(f"rule pattern must be a non-empty string, got {self.pattern!r}")
        try:
            object.__setattr__(self, "_regex", re.compile(self.pattern))
        except re.error as e:
            raise RecipeError(f"rule pattern {self.pattern!r} is not a valid regex: {e}") from None
        if self.config is not None and type(self.config) not in [CONFIG_TYPES[t] for t in WEIGHT_TAGS]:
            raise RecipeError(f"rule {self.pattern!r}: config must be an AffineConfig, "
                              f"DictionaryConfig or None, got {type(self.config).__name__}")

    def matches(self, role: str) -> bool:
        return self._regex.fullmatch(role) is not None


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[Rule, ...] = ()
    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))
        if not isinstance(self.kv_cache, KVCacheConfig):
            raise RecipeError("recipe kv_cache must be a KVCacheConfig")


def resolve(recipe: Recipe, role: str) -> QuantConfig | None:
    """The config of the last rule matching ``role``; ``None`` (float) when none matches."""
    for rule in reversed(recipe.rules):
        if rule.matches(role):
            return rule.config
    return None


def resolve_shared(recipe: Recipe, roles: list[str] | tuple[str, ...]) -> QuantConfig | None:
    """The one config of a tensor serving several roles (tied embedding + LM head)."""
    if not roles:
        raise RecipeError("resolve_shared needs at least one role")
    first, want = roles[0], resolve(recipe, roles[0])
    for role in roles[1:]:
        got = resolve(recipe, role)
        if got != want:
            raise RecipeError(
                f"recipe '{recipe.name}': roles '{first}' and '{role}' are one tensor but resolve "
                f"to different configs: {first} → {want}, {role} → {got}",
                fix="give both roles the same config (one rule matching both)")
    return want


def unmatched_rules(recipe: Recipe, roles) -> list[int]:
    """1-based numbers of rules that match none of ``roles`` (likely typos)."""
    roles = tuple(roles)
    return [i for i, r in enumerate(recipe.rules, 1) if not any(r.matches(x) for x in roles)]


# ---------------------------------------------------------------- JSON

def recipe_to_dict(recipe: Recipe) -> dict:
    return {"format": FORMAT, "version": VERSION, "name": recipe.name,
            "kv_cache": config_to_dict(recipe.kv_cache),
            "rules": [{"pattern": r.pattern, "config": config_to_dict(r.config)}
                      for r in recipe.rules]}


def recipe_to_json(recipe: Recipe) -> str:
    """Versioned JSON, sorted keys, 2-space indent, trailing newline."""
    return json.dumps(recipe_to_dict(recipe), sort_keys=True, indent=2) + "\n"


def recipe_from_dict(obj, source: str | PathLike | None = None) -> Recipe:
    src = source
    check_keys(obj, ("format", "version", "name", "kv_cache", "rules"), "recipe", src)
    if obj.get("format") != FORMAT:
        raise RecipeError(f"not a recipe: format is {obj.get('format')!r}", path=src,
                          fix=f'write "format": "{FORMAT}"')
    if obj.get("version") != VERSION:
        raise RecipeError(f"recipe version {obj.get('version')!r} not supported", path=src,
                          fix=f'write "version": {VERSION}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise RecipeError("recipe needs a non-empty string 'name'", path=src)
    if "kv_cache" not in obj:
        raise RecipeError("recipe needs 'kv_cache'", path=src,
                          fix='e.g. "kv_cache": {"type": "kv_cache", "bits": 32}')
    kv = config_from_dict(obj["kv_cache"], "kv_cache", src, ("kv_cache",))
    rules_obj = obj.get("rules", [])
    if not isinstance(rules_obj, list):
        raise RecipeError("'rules' must be a JSON list", path=src)
    rules = []
    for i, r in enumerate(rules_obj, 1):
        where = f"rule {i}"
        check_keys(r, ("pattern", "config"), where, src)
        if "pattern" not in r or "config" not in r:
            raise RecipeError(f"{where} needs 'pattern' and 'config' (null keeps float)", path=src)
        cfg = config_from_dict(r["config"], f"{where} ('{r['pattern']}')", src, WEIGHT_TAGS)
        try:
            rules.append(Rule(r["pattern"], cfg))
        except RecipeError as e:
            raise RecipeError(f"{where}: {e.detail}", path=src, fix=e.fix) from None
    recipe = Recipe(name, tuple(rules), kv)
    bad = unmatched_rules(recipe, canonical_roles(128))
    if bad:
        i = bad[0]
        raise RecipeError(f"rule {i} pattern '{recipe.rules[i - 1].pattern}' matches no tensor "
                          "role (typo?)", path=src,
                          fix="roles look like embed_tokens, lm_head, layers.3.mlp.down_proj, "
                              "layers.3.self_attn.q_proj, layers.3.input_layernorm")
    return recipe


def recipe_from_json(text: str, source: str | PathLike | None = None) -> Recipe:
    """Parse recipe JSON; unknown types/keys, bad values or versions raise ``RecipeError``.
    Rules are numbered from 1 in messages."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipeError(f"not valid JSON: {e}", path=source) from None
    return recipe_from_dict(obj, source)
