"""Weights for the reference from a checkpoint: canonical name → stored name (``spec.bind``) → float32."""

from __future__ import annotations

import os

import numpy as np

from ..checkpoint import Checkpoint, open_checkpoint
from ..gemma4 import Binding, ModelSpec, bind, spec_from_config


class CheckpointWeights:
    """A ``WeightFn`` over a checkpoint: ``weights("layers.0.mlp.up_proj.weight")`` reads the stored
    tensor (whatever its prefix) as float32, one tensor per call. ``.spec`` / ``.binding`` say what
    was bound."""

    def __init__(self, ckpt: Checkpoint):
        self.checkpoint = ckpt
        self.spec: ModelSpec = spec_from_config(ckpt.config, source=ckpt.path)
        self.binding: Binding = bind(self.spec, ckpt.tensors, source=ckpt.path)

    def __call__(self, name: str) -> np.ndarray:
        return self.checkpoint.read_f32(self.binding.text[name])


def weights_from_checkpoint(src: "str | os.PathLike | Checkpoint") -> CheckpointWeights:
    """A ``WeightFn`` for a checkpoint directory (or an open ``Checkpoint``)."""
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    return CheckpointWeights(ckpt)
