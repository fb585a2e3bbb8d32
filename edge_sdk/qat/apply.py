"""``apply_qat(model, recipe)``: put fake-quantizers on a transformers Gemma 4 model's text decoder.

Each ``nn.Linear`` / ``nn.Embedding`` of the text decoder whose canonical role (its name relative
to the decoder, e.g. ``layers.3.mlp.gate_proj``, ``embed_tokens``) resolves to a config gets a
``torch.nn.utils.parametrize`` parametrization on ``weight``: the module's ``weight`` becomes
``quantizer(weight.original)`` on every access. The latent float weight stays a plain
``nn.Parameter`` (``<module>.parametrizations.weight.original``) and the learnable scale gain
(``...parametrizations.weight.0.log_gain``) is another one, so DDP and FSDP see ordinary
parameters and need no changes. The tied embedding (``embed_tokens`` = LM head) gets ONE
quantizer, registered on both modules (the config is ``resolve_shared`` over ``embed_tokens``
and ``lm_head``). Vision/audio towers and everything the recipe keeps float are untouched.

QAT runs in float32 (the grid ``code * scale`` is exact only there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import RecipeError
from ..gemma4.names import LM_HEAD, TIED_TO, role_of
from ..quant import Recipe, format_of, resolve, resolve_shared
from .equalize import ColumnGain, attach_equalizers
from .fake_quant import AffineQuantizer, DictionaryFakeQuantizer

TEXT_MODEL_CLASSES = ("Gemma4TextModel",)


def find_text_model(model: nn.Module) -> nn.Module:
    """The Gemma 4 text decoder inside ``model`` (ForConditionalGeneration, ForCausalLM, or itself)."""
    for m in model.modules():
        if type(m).__name__ in TEXT_MODEL_CLASSES:
            return m
    raise TypeError(f"{type(model).__name__} contains no Gemma4TextModel")


def _lm_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return None
    # not hasattr(head, "weight"): on a parametrized head that computes the fake-quantized weight
    has = parametrize.is_parametrized(head, "weight") or head._parameters.get("weight") is not None
    return head if has else None


def _quantizer_for(weight: torch.Tensor, cfg, role: str, learn_scales: bool) -> nn.Module:
    if weight.dtype != torch.float32:
        raise RecipeError(f"'{role}' is {weight.dtype}; QAT needs a float32 model",
                          fix="model.float() before apply_qat")
    layout = format_of(cfg).layout   # the storage format decides the fake-quantizer
    if layout in ("channel", "block"):
        return AffineQuantizer(weight, cfg, learn_scale=learn_scales)
    if layout == "dictionary":
        return DictionaryFakeQuantizer(weight, cfg)
    raise RecipeError(f"'{role}': no fake-quantizer for {type(cfg).__name__}")


def _underlying(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def apply_qat(model: nn.Module, recipe: Recipe, *, learn_scales: bool = True,
              equalize: bool = False) -> nn.Module:
    """Fake-quantize ``model``'s text decoder in place per ``recipe``; returns ``model``.

    ``equalize``: also learn a per-input-column gain for q/k/v, gate/up and down (``equalize``
    module); ``export_qat`` folds the gains into the norms and up_proj's rows before it writes.

    Scales start at the PTQ scales (max|w| / qmax) and are learnable unless ``learn_scales`` is
    False; dictionary codebooks start at the NumPy k-means of the current weights (refit them
    with ``refresh_codebooks``). Raises ``RecipeError`` for a recipe that quantizes a tensor this
    toolkit cannot fake-quantize (3-D MoE experts) or a non-float32 model.
    """
    if is_qat(model):
        raise RecipeError("model already has QAT fake-quantizers", fix="apply_qat once")
    text = find_text_model(model)
    head = _lm_head(model)
    embed = text.get_input_embeddings()
    tied = head is not None and _underlying(head) is _underlying(embed)

    for name, module in text.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)) or module is head:
            continue
        role = name
        if module is embed and tied:
            cfg = resolve_shared(recipe, [role_of(TIED_TO), LM_HEAD])
        else:
            cfg = resolve(recipe, role)
        if cfg is None:
            continue
        q = _quantizer_for(module.weight, cfg, role, learn_scales)
        parametrize.register_parametrization(module, "weight", q, unsafe=True)
        if module is embed and tied:
            # Same Parameter, same quantizer: lookup and LM head see one w_hat.
            parametrize.register_parametrization(head, "weight", q, unsafe=True)
    if head is not None and not tied:
        cfg = resolve(recipe, LM_HEAD)
        if cfg is not None:
            q = _quantizer_for(head.weight, cfg, LM_HEAD, learn_scales)
            parametrize.register_parametrization(head, "weight", q, unsafe=True)

    for pname, p in text.named_parameters():
        if p.dim() >= 3 and resolve(recipe, pname.removesuffix(".weight")) is not None:
            raise RecipeError(f"'{pname}' is a {p.dim()}-D tensor (MoE experts); the QAT toolkit "
                              "fake-quantizes 2-D Linear/Embedding weights only")
    model._edge_sdk_qat_recipe = recipe
    model._edge_sdk_qat_equalizers = attach_equalizers(text) if equalize else []
    return model


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, (AffineQuantizer, DictionaryFakeQuantizer)) for m in model.modules())


def quantized_roles(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``role -> (module, quantizer)`` for every fake-quantized tensor (tied head not repeated)."""
    text = find_text_model(model)
    out = {}
    for name, module in text.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            out[name] = (module, module.parametrizations.weight[0])
    head = _lm_head(model)
    if head is not None and parametrize.is_parametrized(head, "weight"):
        q = head.parametrizations.weight[0]
        if not any(q is v[1] for v in out.values()):
            out[LM_HEAD] = (head, q)
    return out


def qat_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(scale gains, every other trainable parameter), each once — for two optimizer groups
    (scales usually without weight decay). The equalization gains (``ColumnGain``) count as scale
    gains: relative, like them."""
    seen, scales, rest = set(), [], []
    for m in model.modules():
        p = m.log_gain if isinstance(m, AffineQuantizer) else m.log_c if isinstance(m, ColumnGain) else None
        if p is not None and p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            scales.append(p)
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            rest.append(p)
    return scales, rest


COARSE_BITS = 2    # latent weights on affine grids wider than this train at ``fine_lr``


def qat_parameter_groups(model: nn.Module, coarse_bits: int = COARSE_BITS
                         ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """``(scale gains, rest, fine)``, each trainable parameter in exactly one list.

    *fine*: the latent weights on fine grids, i.e. affine roles of more than ``coarse_bits`` bits
    (int4/int8) and dictionary tables. PTQ already leaves them close, and their grid step is 4-64x
    smaller than a 2-bit one, so the step size that moves a 2-bit weight usefully churns them across
    many levels. *rest*: everything else that trains, i.e. the 2-bit latent weights (far from a good
    solution after PTQ: they must move by a large share of their step) and the float parameters
    (norms, scalars: no grid). Measured on the tiny model (docs/qat.md, 400 steps): ``fine`` at 0.1x
    the rate of ``rest`` lowers the held-out KLD from 0.068 to 0.053.

    Example: for ``mobile`` on Gemma 4, ``rest`` holds every ``mlp.{gate,up,down}_proj`` latent weight
    and every norm; ``self_attn.q_proj``'s latent weight, ``embed_tokens`` (the tied head) and the PLE
    table are in ``fine``; under ``int4`` every quantized weight is in ``fine``."""
    scales, rest = qat_parameters(model)
    fine_ids = set()
    for module, q in quantized_roles(model).values():
        if not (isinstance(q, AffineQuantizer) and q.cfg.bits <= coarse_bits):
            fine_ids.add(id(module.parametrizations.weight.original))
    return scales, [p for p in rest if id(p) not in fine_ids], [p for p in rest if id(p) in fine_ids]


@torch.no_grad()
def refresh_codebooks(model: nn.Module) -> int:
    """Refit every dictionary codebook with the NumPy k-means on the current latent weights.

    Deterministic, so every data-parallel rank computes the same codebooks from the same
    (replicated) weights; under FSDP ``sharding.refresh_sharded`` gathers each table first.
    Returns the number of tables refitted."""
    n = 0
    for _, (module, q) in quantized_roles(model).items():
        if isinstance(q, DictionaryFakeQuantizer):
            q.refresh(module.parametrizations.weight.original)
            n += 1
    return n


def iter_quantizers(model: nn.Module) -> Iterator[nn.Module]:
    for _, (_, q) in quantized_roles(model).items():
        yield q


@torch.no_grad()
def snap_to_grid(model: nn.Module, select: Callable[[torch.Tensor], bool] | None = None) -> int:
    """Put every latent weight on its grid: ``latent := w_hat`` (the fake-quantized value the
    forward already uses), with each affine quantizer's scale gain folded into its base scale
    (``base_scale := effective_scale()``, ``log_gain := 0``). The forward is unchanged; what
    changes is where the next gradient steps start: every weight at the centre of its bin and
    inside the clamp range, so none is left straddling a rounding boundary (the 2-bit weights'
    oscillation, Nagel et al. 2022) or stuck outside the range where the straight-through gradient
    is 0. ``qat(anneal_steps=N)`` calls it before its low-learning-rate phase. ``select(latent)``:
    only the tensors it accepts (``sharding.snap_sharded``: those gathered now). Returns the number
    of tensors snapped."""
    n = 0
    for _, (module, q) in quantized_roles(model).items():
        latent = module.parametrizations.weight.original
        if select is not None and not select(latent):
            continue
        w_hat = q(latent)
        if isinstance(q, AffineQuantizer):
            q.base_scale.copy_(q.effective_scale().reshape(q.base_scale.shape))
            q.log_gain.zero_()
        latent.copy_(w_hat)
        n += 1
    return n
