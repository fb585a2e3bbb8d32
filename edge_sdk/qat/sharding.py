"""FSDP2 for ``edge-sdk qat --fsdp``: each decoder layer and the rest of the model one shard unit.

Data parallelism (DDP) keeps a whole student, its gradients and AdamW's two moments on every
process; for Gemma 4 E2B in float32 that is about 80 GB before the teacher. Under ``--fsdp``
every process holds 1/N of the student's parameters, gradients and moments, and 1/N of the
frozen teacher's parameters; each forward gathers one layer at a time.

What the loop does besides forward/backward/step needs whole tensors, and this module is where
it gets them:

- ``unsharded(unit)``: one shard unit's parameters gathered for a block of code that reads or
  changes them in place (the anneal phase's snap onto the grid; the codebook refits read the
  embedding tables); on exit every rank writes the result back into its own shard;
- ``full_state`` / ``load_full_state``: the whole state as plain tensors (every rank takes part;
  what rank 0 saves for ``--resume``), and back into the shards; ``gather_into``: the same, one
  tensor at a time, into rank 0's whole copy of the student (the export);
- ``full_like`` / ``shard_like``: one tensor each way (AdamW's moments have their parameter's
  layout).

Every function here is collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .apply import find_text_model, quantized_roles, snap_to_grid
from .fake_quant import DictionaryFakeQuantizer


def _dtensor():
    from torch.distributed.tensor import DTensor, distribute_tensor
    return DTensor, distribute_tensor


def is_sharded(model: nn.Module) -> bool:
    DTensor, _ = _dtensor()
    return any(isinstance(p, DTensor) for p in model.parameters())


def _recomputed(forward):
    """``forward`` under activation checkpointing while gradients are on: the backward runs it
    again instead of keeping what it made. In QAT that is every fake-quantized weight ``w_hat``,
    a whole-size copy of each weight that the linear layers would otherwise hold until the
    backward: as much as the model itself, whatever the sharding."""
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def shard(model: nn.Module, world: int, device: torch.device) -> nn.Module:
    """``fully_shard`` each decoder layer of the text model, then the model (the embeddings, the
    towers, the final norm: the root unit) over ``world`` processes. A trained model's layers are
    recomputed in the backward (``_recomputed``); a frozen one has no backward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    trained = any(p.requires_grad for p in model.parameters())
    for layer in find_text_model(model).layers:
        if trained:
            layer.forward = _recomputed(layer.forward)
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def units(model: nn.Module) -> list[nn.Module]:
    """The shard units, innermost first (the layers, then the root)."""
    from torch.distributed.fsdp import FSDPModule
    found = [m for m in model.modules() if isinstance(m, FSDPModule)]
    return found[1:] + found[:1]


def full_like(t: torch.Tensor) -> torch.Tensor:
    """``t`` whole: a DTensor gathered from every rank, anything else as it is."""
    DTensor, _ = _dtensor()
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` cut as ``like`` is: this rank's shard of a DTensor of ``like``'s layout (every rank
    holds the same ``full``, so nothing is sent), or ``full`` itself for a plain ``like``."""
    DTensor, distribute_tensor = _dtensor()
    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


@contextmanager
def unsharded(unit: nn.Module, writeback: bool = True) -> Iterator[None]:
    """``unit``'s own parameters (not those of shard units inside it) gathered into plain tensors
    for the block; with ``writeback``, what the block changes in place is written back into every
    rank's shard."""
    DTensor, _ = _dtensor()
    mine = {n: p for n, p in unit.named_parameters() if isinstance(p, DTensor)}
    unit.unshard()
    after = {}
    try:
        yield
        if writeback:
            gathered = dict(unit.named_parameters())
            after = {n: gathered[n].detach().clone() for n in mine if not isinstance(gathered[n], DTensor)}
    finally:
        unit.reshard()
    with torch.no_grad():
        for n, full in after.items():
            mine[n].to_local().copy_(shard_like(full, mine[n]).to_local())


def _gathered(t: torch.Tensor) -> bool:
    DTensor, _ = _dtensor()
    return not isinstance(t, DTensor)


def snap_sharded(model: nn.Module) -> int:
    """``apply.snap_to_grid`` one shard unit at a time (a layer's weights gathered, never the model's)."""
    n = 0
    for unit in units(model):
        with unsharded(unit):
            n += snap_to_grid(model, select=_gathered)
    return n


def refresh_sharded(model: nn.Module) -> int:
    """``apply.refresh_codebooks`` with each table gathered; the codebooks are buffers, replicated
    on every rank, and every rank refits the same ones (the k-means is deterministic)."""
    n = 0
    for unit in units(model):
        with unsharded(unit, writeback=False):
            for module, q in quantized_roles(model).values():
                latent = module.parametrizations.weight.original
                if isinstance(q, DictionaryFakeQuantizer) and _gathered(latent):
                    q.refresh(latent.detach().clone())   # a copy: NumPy must not pin FSDP's buffer
                    n += 1
    return n


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every DTensor gathered, as CPU copies (a tied table's two names
    get two tensors: safetensors refuses aliases)."""
    return {k: full_like(v).detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def gather_into(model: nn.Module, dest: nn.Module | None) -> None:
    """Every tensor of the sharded ``model`` gathered, one at a time, into the whole model ``dest``
    (rank 0's; ``None`` on the other ranks, which still take part): the export never holds a
    gathered state beside the copy it goes into."""
    own = dest.state_dict() if dest is not None else None
    if own is not None and set(own) != set(model.state_dict()):
        raise ValueError("the whole copy's tensors are not the sharded model's")
    for k, v in model.state_dict().items():
        full = full_like(v)
        if own is not None:
            own[k].copy_(full.to(own[k].device))


@torch.no_grad()
def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``full_state``'s inverse: every entry of ``state`` into the model's own tensors (shards)."""
    DTensor, _ = _dtensor()
    own = model.state_dict()
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, t in own.items():
        src = shard_like(state[k], t)
        (t.to_local() if isinstance(t, DTensor) else t).copy_(src.to_local() if isinstance(src, DTensor) else src)
