"""edge_sdk.qat: torch fake-quant == NumPy kernels bit for bit, STE gradients, apply/export round
trip with re-rounding error 0, and data-parallel QAT (DDP, FSDP2 on CPU/gloo) == one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edge_sdk.quant import (PRESETS, AffineConfig, DictionaryConfig, DictionaryQuantizer,  # noqa: E402
                            Granularity, compute_scales, dequantize, quantize, read_qat_sidecar)
from edge_sdk.qat import (AffineQuantizer, DictionaryFakeQuantizer, apply_qat,  # noqa: E402
                          export_qat, fake_quant_affine, qat_parameters, quantized_roles,
                          read_qat_codebooks, refresh_codebooks, verify_export)

torch.set_num_threads(2)


def _preset_configs(kind):
    seen = []
    for recipe in PRESETS.values():
        for rule in recipe.rules:
            if isinstance(rule.config, kind) and rule.config not in seen:
                seen.append(rule.config)
    return seen


AFFINE = _preset_configs(AffineConfig)
DICT = _preset_configs(DictionaryConfig) + [
    DictionaryConfig(index_bits=2, codebook_size=4, rows_per_codebook=3),
    DictionaryConfig(index_bits=8, codebook_size=200, rows_per_codebook=16)]


def _cfg_id(c):
    if isinstance(c, AffineConfig):
        return f"int{c.bits}-{c.granularity.value}{c.block_size or ''}"
    return f"dict{c.index_bits}x{c.codebook_size}r{c.rows_per_codebook}"


def test_presets_cover_the_schemes():
    ids = {_cfg_id(c) for c in AFFINE}
    assert {"int8-channel", "int4-channel", "int2-channel", "int4-block32"} <= ids
    # the PLE table's codebook config (found by kind: main's MoE expert rules now come last)
    assert any(isinstance(r.config, DictionaryConfig) and r.config in DICT for r in PRESETS["mobile"].rules)


def _weights(rng, shape, cfg):
    """Random rows incl. an all-zero row, a constant row, tiny and huge magnitudes."""
    w = rng.standard_normal(shape).astype(np.float32) * rng.choice([1e-3, 0.02, 1.0, 30.0],
                                                                   size=(shape[0], 1)).astype(np.float32)
    w[0] = 0.0
    if shape[0] > 2:
        w[1] = np.float32(0.37)
        w[2, ::3] = -w[2, ::3].max()
    return w


def _edge_scales_and_weights(rng, shape, cfg):
    """Given (QAT) scales and weights sitting exactly at the clamp edges, at half-way points
    (round-half-to-even) and beyond the range."""
    rows, cols = shape
    nb = 0 if cfg.granularity is Granularity.CHANNEL else cols // cfg.block_size
    sshape = (rows,) if nb == 0 else (rows, nb)
    s = (rng.uniform(0.5, 2.0, sshape) * rng.choice([1e-3, 0.05, 1.0], size=(rows,) + (1,) * (len(sshape) - 1)))
    s = s.astype(np.float16 if nb else np.float32).astype(np.float32)
    se = s[:, None] if nb == 0 else np.repeat(s, cfg.block_size, axis=1)
    k = rng.integers(cfg.qmin - 3, cfg.qmax + 4, size=shape).astype(np.float32)
    frac = rng.choice(np.array([0.0, 0.5, -0.5, 0.25, 0.499], np.float32), size=shape)
    w = ((k + frac) * se).astype(np.float32)
    w[0] = 0.0
    return w, s


SHAPES = [(5, 64), (17, 96), (64, 32), (3, 256)]


@pytest.mark.parametrize("cfg", AFFINE, ids=_cfg_id)
def test_affine_fake_quant_equals_numpy_bit_for_bit(cfg):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        w = _weights(rng, shape, cfg)
        # PTQ scales (what the quantizer starts from)
        qt = quantize(w, cfg)
        got = fake_quant_affine(torch.from_numpy(w), torch.from_numpy(qt.scales.astype(np.float32)), cfg)
        assert got.dtype == torch.float32
        assert np.array_equal(got.numpy(), dequantize(qt)), shape
        # given scales, values on clamp edges, exact ties and out of range
        w2, s2 = _edge_scales_and_weights(rng, shape, cfg)
        qt2 = quantize(w2, cfg, scales=s2)
        got2 = fake_quant_affine(torch.from_numpy(w2), torch.from_numpy(s2), cfg)
        assert np.array_equal(got2.numpy(), dequantize(qt2)), shape
        assert (qt2.codes == cfg.qmin).any() and (qt2.codes == cfg.qmax).any()


@pytest.mark.parametrize("cfg", AFFINE, ids=_cfg_id)
def test_affine_quantizer_module_matches_numpy_after_training_scales(cfg):
    rng = np.random.default_rng(1)
    w = _weights(rng, (33, 128), cfg)
    q = AffineQuantizer(torch.from_numpy(w), cfg)
    assert np.array_equal(q.effective_scale().detach().numpy(), compute_scales(w, cfg).astype(np.float32))
    with torch.no_grad():
        q.log_gain.uniform_(-0.7, 0.7)   # as if trained
    s = q.effective_scale().detach().numpy()
    assert s.dtype == np.float32
    got = q(torch.from_numpy(w)).detach().numpy()
    qt = quantize(w, cfg, scales=s)    # NumPy accepts them as they are (block: float16-exact)
    assert np.array_equal(got, dequantize(qt))
    # the fake-quantized weight re-quantizes with its own scales with error exactly 0
    assert quantize(got, cfg, scales=s).error == 0.0


@pytest.mark.parametrize("cfg", AFFINE, ids=_cfg_id)
def test_affine_ste_gradients(cfg):
    rng = np.random.default_rng(2)
    w, s = _edge_scales_and_weights(rng, (8, 64), cfg)
    wt = torch.from_numpy(w).requires_grad_(True)
    st = torch.from_numpy(s).requires_grad_(True)
    up = torch.from_numpy(rng.standard_normal(w.shape).astype(np.float32))
    fake_quant_affine(wt, st, cfg).backward(up)
    se = s[:, None] if cfg.granularity is Granularity.CHANNEL else np.repeat(s, cfg.block_size, axis=1)
    x = w / se
    inside = (x >= cfg.qmin) & (x <= cfg.qmax)
    assert inside.any() and (~inside).any()
    assert np.array_equal(wt.grad.numpy(), np.where(inside, up.numpy(), 0.0).astype(np.float32))
    assert st.grad is not None and np.abs(st.grad.numpy()).sum() > 0
    # through the module: the learnable log-gain gets a gradient too
    q = AffineQuantizer(torch.from_numpy(w), cfg)
    wt2 = torch.from_numpy(w).requires_grad_(True)
    (q(wt2) * up).sum().backward()
    assert q.log_gain.grad is not None and q.log_gain.grad.abs().sum() > 0
    assert wt2.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", DICT, ids=_cfg_id)
def test_dictionary_fake_quant_equals_numpy_bit_for_bit(cfg):
    rng = np.random.default_rng(3)
    for shape in [(130, 48), (64, 16), (7, 40)]:
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        w[0] = 0.0
        w[3, :8] = 0.0123
        dq = DictionaryQuantizer(cfg)
        dt = dq.quantize(w)
        q = DictionaryFakeQuantizer(torch.from_numpy(w), cfg)
        assert np.array_equal(q.codebooks.numpy(), dt.codebooks)
        wt = torch.from_numpy(w).requires_grad_(True)
        got = q(wt)
        assert np.array_equal(got.detach().numpy(), dq.dequantize(dt)), shape
        # ties: values exactly half-way between two entries go to the lower one, as in NumPy
        b = q.codebooks.numpy()
        mid = ((b[:, :-1].astype(np.float64) + b[:, 1:]) / 2).astype(np.float32)
        w2 = w.copy()
        r = cfg.rows_per_codebook
        for g in range(b.shape[0]):
            w2[g * r, :min(mid.shape[1], w.shape[1])] = mid[g, :w.shape[1]]
        from edge_sdk.qat import dictionary_codes
        want = DictionaryQuantizer.dequantize(type(dt)(dictionary_codes(w2, b, cfg), b, cfg))
        assert np.array_equal(q(torch.from_numpy(w2)).numpy(), want)
        # STE: the gradient passes straight through
        up = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        got.backward(up)
        assert torch.equal(wt.grad, up)


def test_dictionary_refresh_refits_codebooks():
    cfg = next(r.config for r in PRESETS["mobile"].rules if isinstance(r.config, DictionaryConfig))
    w = torch.randn(128, 32)
    q = DictionaryFakeQuantizer(w, cfg)
    w2 = w * 3
    q.refresh(w2)
    assert np.array_equal(q.codebooks.numpy(), DictionaryQuantizer(cfg).quantize(w2.numpy()).codebooks)


# ------------------------------------------------------------------ tiny Gemma 4

def tiny_config(causal: bool = False, towers: bool = True):
    from transformers import Gemma4Config, Gemma4TextConfig
    text = dict(vocab_size=192, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
                max_position_embeddings=128, sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention",
                             "full_attention"],
                final_logit_softcapping=30.0, vocab_size_per_layer_input=192,
                hidden_size_per_layer_input=32, num_kv_shared_layers=2, use_double_wide_mlp=True)
    if causal:
        return Gemma4TextConfig(**text)
    # tiny towers: their 0-d clip buffers must survive the export with their shapes
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, global_head_dim=16, patch_size=4,
                  pooling_kernel_size=2, position_embedding_size=64, max_position_embeddings=256)
    audio = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 subsampling_conv_channels=[8, 4], output_proj_dims=32, conv_kernel_size=3)
    if not towers:  # text batches leave tower parameters unused, which plain DDP refuses
        vision = audio = None
    return Gemma4Config(text_config=text, vision_config=vision, audio_config=audio)


def tiny_model(causal: bool = False, seed: int = 0, towers: bool = True):
    from transformers import Gemma4ForCausalLM, Gemma4ForConditionalGeneration
    torch.manual_seed(seed)
    cls = Gemma4ForCausalLM if causal else Gemma4ForConditionalGeneration
    return cls(tiny_config(causal, towers)).float().eval()


def _ids(seed=0, shape=(2, 24)):
    return torch.randint(3, 192, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("causal", [False, True], ids=["conditional", "causal"])
@pytest.mark.parametrize("preset", ["mobile", "int4"])
def test_apply_train_export_roundtrip(tmp_path, causal, preset):
    from transformers import AutoModelForCausalLM, Gemma4ForConditionalGeneration
    recipe = PRESETS[preset]
    model = tiny_model(causal)
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    apply_qat(model, recipe)
    roles = quantized_roles(model)
    assert "embed_tokens" in roles and "lm_head" not in roles  # tied: one quantizer for both
    head_q = model.lm_head.parametrizations.weight[0]
    assert head_q is roles["embed_tokens"][1]
    assert "embed_tokens_per_layer" in roles
    with torch.no_grad():
        fq = model(input_ids=ids).logits
    assert not torch.allclose(fq, ref)
    # a few QAT steps so the scales move off their PTQ init
    model.train()
    scales, rest = qat_parameters(model)
    opt = torch.optim.Adam([{"params": scales, "lr": 2e-2}, {"params": rest, "lr": 1e-3}])
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    refresh_codebooks(model)
    model.eval()
    moved = [q for _, (_, q) in roles.items() if isinstance(q, AffineQuantizer)
             and q.log_gain.abs().max() > 0]
    assert moved
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    out = export_qat(model, tmp_path / "qat")
    errs = verify_export(out)
    assert errs and all(e == 0.0 for e in errs.values())
    assert set(errs) == set(roles)
    side = read_qat_sidecar(out / "qat_scales.safetensors")
    assert side.recipe == recipe
    for role, (_, q) in roles.items():
        if isinstance(q, AffineQuantizer):
            assert np.array_equal(side.scales[role], q.effective_scale().detach().numpy())
    if preset == "mobile":
        books = read_qat_codebooks(out / "qat_codebooks.safetensors")
        assert set(books) == {"embed_tokens_per_layer"}
    # NumPy re-quantization of a stored tensor reproduces codes with error 0
    from safetensors.numpy import load_file
    sd = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in sd.values())
    assert "lm_head.weight" not in sd
    plain_sd = tiny_model(causal).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in plain_sd.items() if k != "lm_head.weight"}
    prefix = "model." if causal else "model.language_model."
    cfg = roles["layers.0.mlp.down_proj"][1].cfg
    qt = quantize(sd[f"{prefix}layers.0.mlp.down_proj.weight"], cfg,
                  scales=side.scales["layers.0.mlp.down_proj"])
    assert qt.error == 0.0
    # the export loads in plain transformers and computes exactly the QAT model's logits
    cls = AutoModelForCausalLM if causal else Gemma4ForConditionalGeneration
    plain = cls.from_pretrained(str(out)).eval()
    with torch.no_grad():
        again = plain(input_ids=ids).logits
    assert torch.equal(again, trained)


@pytest.mark.parametrize("preset", ["mobile", "int4"])
def test_snap_to_grid_keeps_the_forward_and_puts_every_latent_weight_on_it(preset):
    """``snap_to_grid``: the logits do not move, each latent weight equals its fake-quantized
    value (so it sits inside the clamp range, at a bin centre), the gains are folded (0), and a
    second snap changes nothing."""
    from edge_sdk.qat import snap_to_grid
    model = tiny_model(causal=True)
    apply_qat(model, PRESETS[preset])
    ids = _ids()
    scales, rest = qat_parameters(model)
    opt = torch.optim.Adam([{"params": scales, "lr": 5e-2}, {"params": rest, "lr": 5e-3}])
    for _ in range(3):   # latent weights off the grid, gains off 0
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    roles = quantized_roles(model)
    latent = {r: m.parametrizations.weight.original for r, (m, _) in roles.items()}
    assert any(not torch.equal(latent[r], q(latent[r])) for r, (_, q) in roles.items())
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert snap_to_grid(model) == len(roles)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
        for r, (_, q) in roles.items():
            assert torch.equal(latent[r], q(latent[r])), r
            if isinstance(q, AffineQuantizer):
                assert not q.log_gain.any()
                x = latent[r] / q.effective_scale().reshape(-1, 1) if q.cfg.block_size is None else None
                if x is not None:
                    assert x.min() >= q.cfg.qmin - 1e-4 and x.max() <= q.cfg.qmax + 1e-4
        snapped = {r: t.clone() for r, t in latent.items()}
        snap_to_grid(model)
        assert all(torch.equal(latent[r], snapped[r]) for r in latent)


@pytest.mark.parametrize("preset", ["mobile", "int4"])
def test_parameter_groups_put_fine_grids_apart(preset):
    """``qat_parameter_groups``: every trainable parameter in exactly one group; *fine* is exactly the
    latent weights on grids wider than 2 bits and the dictionary tables (mobile: attention, the tied
    embedding, PLE; int4: every quantized weight); *rest* the 2-bit latent weights (mobile's MLPs)
    and the float norms; the scale gains apart."""
    from edge_sdk.qat import qat_parameter_groups
    model = tiny_model(causal=True)
    apply_qat(model, PRESETS[preset])
    scales, rest, fine = qat_parameter_groups(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids = [id(p) for g in (scales, rest, fine) for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in trainable}
    latent = {r: m.parametrizations.weight.original for r, (m, _) in quantized_roles(model).items()}
    two_bit = {id(t) for r, t in latent.items() if ".mlp." in r} if preset == "mobile" else set()
    assert {id(p) for p in fine} == {id(t) for t in latent.values()} - two_bit
    assert two_bit <= {id(p) for p in rest} and (preset == "int4" or two_bit)
    assert id(latent["embed_tokens"]) in {id(p) for p in fine}
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("norm" in names[id(p)] for p in rest) and not any("norm" in names[id(p)] for p in fine)
    assert set(map(id, scales)) == set(map(id, qat_parameters(model)[0]))


@pytest.mark.parametrize("preset", ["mobile", "int4"])
def test_equalization_trains_and_folds_into_plain_grids(tmp_path, preset):
    """``apply_qat(equalize=True)``: one shared column gain per (layer, q/k/v | gate/up | down); at
    c = 1 the forward is exactly the plain QAT forward; the gains train with the scale gains; the
    export folds them (norm weights / c, up_proj rows and scales / c) into a checkpoint whose every
    weight re-quantizes with error 0 and which plain transformers runs to the trained logits."""
    from transformers import AutoModelForCausalLM
    from edge_sdk.qat import ColumnGain, qat_parameter_groups, snap_to_grid
    from safetensors.numpy import load_file
    ids = _ids()
    plain = tiny_model(causal=True)
    apply_qat(plain, PRESETS[preset])
    model = tiny_model(causal=True)
    apply_qat(model, PRESETS[preset], equalize=True)
    plan = model._edge_sdk_qat_equalizers
    layers = model.model.layers
    assert [(e["group"], e["layer"]) for e in plan] == [
        (g, i) for i in range(len(layers)) for g in ("attn_in", "mlp_in", "mlp_mid")]
    shared = next(e for e in plan if e["layer"] == 2 and e["group"] == "attn_in")
    assert shared["readers"] == [layers[2].self_attn.q_proj]      # a kv-shared layer: q only
    first = next(e for e in plan if e["layer"] == 0 and e["group"] == "attn_in")
    qs = [m.parametrizations.weight[0] for m in first["readers"]]
    assert len(qs) == 3 and all(q.column_gain is first["gain"] for q in qs)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    scales, rest, fine = qat_parameter_groups(model)
    gains = [m.log_c for m in model.modules() if isinstance(m, ColumnGain)]
    assert len(gains) == len(plan) and {id(p) for p in gains} <= {id(p) for p in scales}
    opt = torch.optim.Adam([{"params": scales, "lr": 5e-2}, {"params": rest + fine, "lr": 1e-3}])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.abs().max() > 0 for p in gains)
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        snap_to_grid(model)
        assert torch.allclose(model(input_ids=ids).logits, trained, atol=1e-5, rtol=0)
        c_norm = first["gain"]().clone()
        norm = layers[0].input_layernorm.weight.clone()
    out = export_qat(model, tmp_path / "qat")
    assert model._edge_sdk_qat_equalizers is plan       # export folded a copy, not the model
    errs = verify_export(out)
    assert errs and all(e == 0.0 for e in errs.values())
    sd = load_file(str(out / "model.safetensors"))
    assert np.allclose(sd["model.layers.0.input_layernorm.weight"], (norm / c_norm).numpy(), rtol=1e-6)
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        folded = again(input_ids=ids).logits
    assert torch.allclose(folded, trained, atol=1e-3 * float(trained.abs().max()), rtol=0)


def test_apply_refuses_bf16_and_double_apply():
    from edge_sdk.errors import RecipeError
    model = tiny_model().to(torch.bfloat16)
    with pytest.raises(RecipeError, match="float32"):
        apply_qat(model, PRESETS["mobile"])
    model = tiny_model()
    apply_qat(model, PRESETS["int8"])
    with pytest.raises(RecipeError, match="already"):
        apply_qat(model, PRESETS["int8"])


# ------------------------------------------------------------------ data parallel

STEPS, LR, GLOBAL_BATCH = 3, 0.05, 4


def _train(model, batches, world: int = 1, rank: int = 0):
    scales, rest = qat_parameters(model)
    opt = torch.optim.SGD([{"params": scales}, {"params": rest}], lr=LR, momentum=0.9)
    per = GLOBAL_BATCH // world
    for ids in batches:
        x = ids[rank * per:(rank + 1) * per]
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


def _batches():
    return [_ids(100 + i, (GLOBAL_BATCH, 16)) for i in range(STEPS)]


def _full_state(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("module.")] = t.detach().clone()
    return out


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        recipe = PRESETS["mobile"]
        model = apply_qat(tiny_model(towers=False).train(), recipe)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        _train(ddp, _batches(), world, rank)
        if rank == 0:
            save_file(_full_state(model), os.path.join(out_dir, "ddp.safetensors"))

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        model = apply_qat(tiny_model(towers=False).train(), recipe)
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        _train(model, _batches(), world, rank)
        state = _full_state(model)   # all-gathers DTensors: every rank takes part
        if rank == 0:
            save_file(state, os.path.join(out_dir, "fsdp.safetensors"))

        # A Trainer under FSDP2: QATCallback's hooks on the shards, as the Trainer calls them
        from transformers import TrainerState
        from edge_sdk.qat import QATCallback
        model = tiny_model(towers=False).train()
        cb = QATCallback(recipe, out_dir=os.path.join(out_dir, "callback"), refresh_every=STEPS)
        cb.on_init_end(None, None, None, model=model)
        for layer in model.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        _train(model, _batches(), world, rank)
        st = TrainerState(global_step=STEPS, max_steps=2 * STEPS)
        st.is_world_process_zero = rank == 0
        cb.on_step_end(None, st, None, model=model)
        cb.on_train_end(None, st, None, model=model)
        assert cb.refreshes == 1 and (cb.exported is not None) == (rank == 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Data parallelism changes the order of float32 gradient sums (all-reduce of per-rank means vs
# one mean of the global batch), so the runs agree to rounding, not bit for bit: after 3 SGD
# steps (lr 0.05, momentum 0.9; the weights move by ~1e-2) they agree to ~1e-7. SGD, not Adam:
# Adam divides by sqrt(v), turning a rounding-level sign flip of a near-zero gradient (PLE rows
# of tokens hardly in the batch) into a whole-step difference (~lr), which says nothing about
# the QAT modules.
ATOL = 1e-5


@pytest.mark.slow
def test_ddp_fsdp_and_fsdp_callback_match_single_process(tmp_path):
    import torch.multiprocessing as mp
    import torch.distributed as dist
    from safetensors.torch import load_file
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    ref = apply_qat(tiny_model(towers=False).train(), PRESETS["mobile"])
    init = _full_state(ref)
    _train(ref, _batches())
    want = _full_state(ref)
    refresh_codebooks(ref)
    export_qat(ref, tmp_path / "one")
    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    # QATCallback under FSDP2 gathers the shards into a whole copy and exports what one process does
    assert all(e == 0.0 for e in verify_export(tmp_path / "callback").values())
    for name in ("model.safetensors", "qat_scales.safetensors", "qat_codebooks.safetensors"):
        one, cb = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "callback" / name))
        assert set(one) == set(cb), name
        worst = max((one[k].float() - cb[k].float()).abs().max().item() for k in one)
        assert worst <= ATOL, f"callback {name}: max |Δ| {worst}"
    for kind in ("ddp", "fsdp"):
        got = load_file(str(tmp_path / f"{kind}.safetensors"))
        assert set(got) == set(want), kind
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        assert worst <= ATOL, f"{kind}: max |Δw| {worst}"
        # and the scales really trained
        gains = [k for k in want if k.endswith("log_gain")]
        assert gains and any(want[k].abs().max() > 100 * ATOL for k in gains)
    moved = max((want[k] - init[k]).abs().max().item() for k in want)
    assert moved > 100 * ATOL
