"""``QATCallback``: QAT inside a Hugging Face ``Trainer`` script the user already has.

    model = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    trainer = Trainer(model=model, args=TrainingArguments(..., save_strategy="no"),
                      train_dataset=ds, callbacks=[QATCallback("mobile", out_dir="qat-out", tokenizer=ckpt)])
    trainer.train()       # then: edge-sdk convert qat-out -o phone --recipe mobile

- ``on_init_end`` (end of ``Trainer.__init__``, before the optimizer exists): ``apply_qat`` on the
  model unless it already carries fake-quantizers, so the optimizer sees the latent weights and
  the scale gains (the Trainer's own loss — cross-entropy, or the user's — trains them);
- ``on_step_end``: refit the dictionary codebooks every ``refresh_every`` steps until
  ``refresh_until`` of ``max_steps`` (deterministic: every data-parallel rank computes the same);
- ``on_train_end``: on the main process, ``export_qat`` into ``out_dir`` (float32 on the grid,
  re-rounding error 0, verified) with the tokenizer, built beside it and renamed into place.

``out_dir`` is checked when the callback is made, before any training: it must be missing or
empty, or (with ``overwrite``) a QAT checkpoint edge-sdk wrote (``export.check_qat_output``).

Under FSDP2 (``fsdp_config={"fsdp_version": 2}``, or ``accelerate launch`` with FSDP2) the model's
parameters are shards: the refits gather each table first (``sharding.refresh_sharded``), and at the
end every rank takes part in gathering the model, one tensor at a time, into a whole copy that the
main process builds from the model's config and exports (``sharding.gather_into``).

The Trainer's intermediate checkpoints hold the parametrized model (``save_strategy="no"`` skips
them; ``edge-sdk qat`` has its own resumable state). Distillation from the float model is what
``edge-sdk qat`` adds on top; in a Trainer, put it in ``compute_loss``.
"""

from __future__ import annotations

from os import PathLike

from transformers import TrainerCallback

from ..quant import Recipe, load_recipe
from .apply import apply_qat, is_qat, refresh_codebooks
from .equalize import has_equalizers
from .export import check_qat_output, export_qat
from .sharding import gather_into, is_sharded, refresh_sharded


class QATCallback(TrainerCallback):
    def __init__(self, recipe: str | PathLike | Recipe = "mobile", *, out_dir: str | PathLike | None = None,
                 tokenizer=None, refresh_every: int = 50, refresh_until: float = 0.8, overwrite: bool = False):
        self.recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        if out_dir is not None:
            check_qat_output(out_dir, resume=False, overwrite=overwrite)
        self.out_dir, self.tokenizer, self.overwrite = out_dir, tokenizer, overwrite
        self.refresh_every, self.refresh_until = refresh_every, refresh_until
        self.refreshes = 0
        self.exported = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None and not is_qat(model):
            apply_qat(model, self.recipe)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if model is None or not self.refresh_every or step % self.refresh_every:
            return
        if state.max_steps and step >= self.refresh_until * state.max_steps:
            return
        if (refresh_sharded if is_sharded(model) else refresh_codebooks)(model):
            self.refreshes += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.out_dir is None or model is None:
            return
        main = state.is_world_process_zero
        if is_sharded(model):          # collective: every rank sends its shards, the main one exports
            whole = self._whole_copy(model) if main else None
            gather_into(model, whole)
            model = whole
        if not main:
            return
        was = model.training
        model.eval()
        self.exported = export_qat(model, self.out_dir, self.recipe, tokenizer=self.tokenizer,
                                   overwrite=self.overwrite)
        model.train(was)

    def _whole_copy(self, model):
        """A whole CPU model of ``model``'s class and config with the same fake-quantizers, for
        ``gather_into`` to fill (its own initial values are all overwritten)."""
        from torch.distributed.fsdp import FSDPModule
        cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclasses it
        whole = cls(model.config).eval()
        return apply_qat(whole, self.recipe, equalize=has_equalizers(model))
