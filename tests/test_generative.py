"""Minimax diffusion: the diffusion maths, the memories and losses, the DiT backbone and its pipeline layout,
training (resume, 2 processes), sampling and the commands, on tiny real diffusers models."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gendistill.generative.backbone import (
    Backbone,
    DiffFitDiT,
    build_dit,
    load_backbone,
    save_backbone,
    trainable_parameter_names,
)
from gendistill.generative.diffusion import GaussianDiffusion, respaced_timesteps
from gendistill.generative.memory import ClassMemory, MinimaxMemories, minimax_losses
from gendistill.generative.method import MinimaxConfig, generate, new_backbone, resolve_class_ids
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.generative.train import latest_checkpoint, train_backbone
from gendistill.utils.errors import CheckpointError, ConfigError

TINY = dict(arch="custom-D2-W16-H2/4", pretrain_steps=2, pretrain_batch_size=8, finetune_steps=2, batch_size=4,
            sample_steps=3, sample_batch_size=8, checkpoint_every=0, log_every=1, cfg_scale=2.0)


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=16).eval()


def tiny_backbone(space: str = "pixel", depth: int = 2) -> Backbone:
    if space == "pixel":
        net = DiffFitDiT(build_dit(f"custom-D{depth}-W16-H2/4", 1, 16, 10))
        return Backbone(net, GaussianDiffusion.linear(), "pixel", 1, 16, latent_scale=1.0)
    net = DiffFitDiT(build_dit(f"custom-D{depth}-W16-H2/2", 4, 8, 10))
    return Backbone(net, GaussianDiffusion.linear(), "latent", 3, 16, tiny_vae(1), tiny_vae(2))


# ------------------------------------------------------------------------------------------- diffusion
def test_respacing_matches_dit_and_keeps_alpha_bar():
    steps = respaced_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 999 and steps[1] == round(999 / 49)
    base = GaussianDiffusion.linear()
    chain = base.respace(50)
    assert torch.equal(chain.timestep_map, torch.tensor(steps))
    assert torch.allclose(chain.alphas_cumprod, base.alphas_cumprod[steps], rtol=1e-10)


def test_x0_prediction_inverts_q_sample_and_vb_vanishes_for_the_true_posterior():
    d = GaussianDiffusion.linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([1, 5, 100, 400, 800, 999])
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(x_t, t, noise), x0, atol=1e-4)
    # A model that predicts the true noise and v = -1 (posterior variance) has zero KL for t >= 1.
    perfect = lambda x, tt: torch.cat([noise, -torch.ones_like(noise)], 1)  # noqa: E731
    losses = d.training_losses(perfect, x0, t, noise)
    assert torch.allclose(losses["mse"], torch.zeros(6), atol=1e-10)
    assert torch.allclose(losses["vb"], torch.zeros(6), atol=1e-5)
    assert torch.allclose(losses["x0_hat"], x0, atol=1e-4)
    # The VB term trains only the variance output: no gradient reaches epsilon through it.
    out = torch.cat([noise, torch.zeros_like(noise)], 1).requires_grad_(True)
    d.training_losses(lambda x, tt: out, x0, t, noise)["vb"].sum().backward()
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ancestral_sampling_with_an_oracle_model_returns_the_data_point(prediction):
    """For data = one point, the exact predictor is known; 50 respaced steps must land on the point."""
    full = GaussianDiffusion.linear(prediction=prediction)
    target = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def oracle(x, t):  # t: original-chain timesteps
        a = full.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
        b = full.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (x - a * target) / b
        pred = eps if prediction == "epsilon" else a * eps - b * target
        return torch.cat([pred, torch.zeros_like(pred)], 1)

    out = full.respace(50).sample(oracle, torch.randn(3, 51, 1, 4, 4, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(out, target, atol=1e-4)
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 300, 999])
    losses = full.training_losses(oracle, target, t, noise)
    assert torch.allclose(losses["mse"], torch.zeros(3), atol=1e-6)
    assert torch.allclose(losses["x0_hat"], target, atol=1e-3)


def test_sampling_learned_variance_interpolates_in_log_space():
    d = GaussianDiffusion.linear().respace(10)
    x = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([5, 5])
    for v, expected in ((-1.0, d.posterior_log_variance_clipped[5]), (1.0, d.betas[5].log())):
        _, log_var, _ = d.p_mean_variance(torch.cat([x, torch.full_like(x, v)], 1), x, t)
        assert torch.allclose(log_var, torch.full_like(x, float(expected)), atol=1e-6)


# -------------------------------------------------------------------------------------- memory / losses
def test_memory_is_fifo_per_class_and_keeps_the_newest():
    mem = ClassMemory(num_classes=2, capacity=3, dim=1)
    mem.push(torch.tensor([[1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1]))
    mem.push(torch.tensor([[3.0], [4.0]]), torch.tensor([0, 0]))
    assert mem.ordered(0).flatten().tolist() == [2.0, 3.0, 4.0]  # 1 evicted first
    assert mem.ordered(1).flatten().tolist() == [10.0]
    mem.push(torch.tensor([[5.0], [6.0], [7.0], [8.0]]), torch.tensor([0, 0, 0, 0]))  # more than capacity
    assert mem.ordered(0).flatten().tolist() == [6.0, 7.0, 8.0]


def test_minimax_losses_on_hand_made_vectors():
    real, pred = ClassMemory(3, 4, 2), ClassMemory(3, 4, 2)
    real.push(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]))
    pred.push(torch.tensor([[1.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 2]))
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])  # class 1 has real entries but no predictions yet: skipped
    rep, div, active = minimax_losses(x, labels, real, pred)
    # class 0: min cos over {(2,0),(1,1)} x {(1,0),(0,1)} = cos((2,0),(0,1)) = 0 -> L_r = 1;
    # max cos with the prediction (1,1): cos((1,1),(1,1)) = 1 -> L_d = 1. Two classes are present in the batch
    # (the reference's num_ry = 2, the class without predictions included), so both are halved.
    assert int(active) == 1
    assert math.isclose(rep.item(), 0.5, abs_tol=1e-6) and math.isclose(div.item(), 0.5, abs_tol=1e-6)
    (rep + div).backward()
    assert x.grad[2].abs().sum() == 0  # the skipped class gets no gradient
    smooth_rep, smooth_div, _ = minimax_losses(x.detach(), labels, real, pred, temperature=1e-4)
    assert math.isclose(float(smooth_rep), 0.5, abs_tol=1e-3) and math.isclose(float(smooth_div), 0.5, abs_tol=1e-3)
    soft_rep, _, _ = minimax_losses(x.detach(), labels, real, pred, temperature=1.0)
    assert float(soft_rep) > 0.5  # the soft minimum lies below the hard one
    only_zero, _, _ = minimax_losses(x[:2].detach(), labels[:2], real, pred)
    assert math.isclose(float(only_zero), 1.0, abs_tol=1e-6)  # one class present: num_ry = 1


def test_loss_comes_before_the_memory_update_and_first_appearance_only_fills():
    mems = MinimaxMemories(num_classes=2, capacity=8, dim=3)
    x = torch.randn(4, 3)
    rep, div, active = mems.losses_then_update(x, x + 1, torch.tensor([0, 0, 1, 1]))
    assert int(active) == 0 and float(rep) == 0 and float(div) == 0
    assert mems.pred.count.tolist() == [2, 2] and mems.real.count.tolist() == [2, 2]
    rep, div, active = mems.losses_then_update(x, x, torch.tensor([0, 0, 1, 1]))
    assert int(active) == 2 and math.isclose(float(div), 1.0, abs_tol=1e-5)  # same predictions as last time


# ---------------------------------------------------------------------------------------------- backbone
def test_difffit_trainable_subset_counts_tiny_and_dit_xl():
    net = DiffFitDiT(build_dit("custom-D2-W16-H2/4", 1, 16, 10))
    names = trainable_parameter_names(net)
    params = dict(net.named_parameters())
    w, n_cls, patch_out = 16, 10, 4 * 4 * 2
    expected = w + 2 * w + (n_cls + 1) * w + 2 * 15 * w + 1 * 6 * w + 2 * w + patch_out
    assert sum(params[n].numel() for n in names) == expected
    assert not any("norm1.linear.weight" in n for n in names)  # adaLN matrices stay frozen
    assert sum(1 for n in names if "embedding_table" in n) == 1  # one shared class table
    with torch.device("meta"):
        xl = DiffFitDiT(build_dit("DiT-XL/2", 4, 32, 1000))
    xl_params = dict(xl.named_parameters())
    trainable = sum(xl_params[n].numel() for n in trainable_parameter_names(xl))
    hand = 1152 + 2 * 1152 + 1001 * 1152 + 28 * 17280 + 14 * 6912 + 2304 + 32
    assert trainable == hand  # about 1.74 M, the reference's set
    assert 670e6 < sum(p.numel() for p in xl.parameters()) < 680e6


def test_scales_start_at_identity_and_act_on_the_output():
    bb = tiny_backbone()
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 500]), torch.tensor([1, 2])
    for p in bb.net.parameters():  # DiT zero-inits the outputs; make the network non-trivial
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    before = bb.net(x, t, y)
    bb.net.load_state_dict(dict(bb.net.state_dict()), strict=True)
    with torch.no_grad():
        bb.net.mlp_branch_scale[0].fill_(0.5)
    assert not torch.allclose(bb.net(x, t, y), before)


def test_pipeline_layout_round_trip_with_separate_encoder(tmp_path):
    bb = tiny_backbone("latent")
    with torch.no_grad():
        bb.net.qkv_scale[0].fill_(1.5)
        bb.net.transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.add_(0.3)
    bb.id2label = {i: f"c{i}" for i in range(10)}
    bb.diffusion = GaussianDiffusion.linear(prediction="v_prediction")
    path = save_backbone(bb, tmp_path / "pipe")
    assert {p.name for p in path.iterdir()} >= {"transformer", "vae", "vae_encoder", "scheduler", "model_index.json"}
    loaded = load_backbone(path)
    assert loaded.space == "latent" and loaded.image_size == 16 and loaded.id2label[3] == "c3"
    assert loaded.diffusion.prediction == "v_prediction"
    blocks = loaded.net.transformer.transformer_blocks
    assert blocks[1].norm1.emb is blocks[0].norm1.emb
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 10])
    assert torch.allclose(loaded.net(x, t, y), bb.net(x, t, y), atol=1e-6)
    assert loaded.net.qkv_scale[0][0].item() == 1.5
    img = torch.rand(2, 3, 16, 16)
    assert torch.allclose(loaded.encode(img), bb.encode(img), atol=1e-5)
    assert torch.allclose(loaded.decode(x), bb.decode(x), atol=1e-5)
    # diffusers' own DiTPipeline reads the folder (its null class is fixed at 1000, so no guidance here).
    from diffusers import DiTPipeline

    images = DiTPipeline.from_pretrained(path)(class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.0,
                                               output_type="np").images
    assert images.shape == (2, 16, 16, 3)


def test_loads_a_diffusers_made_dit_pipeline_folder(tmp_path):
    """The facebook/DiT-XL-2-256 layout as diffusers writes it: per-block embedder copies, DDIM scheduler config."""
    from diffusers import DDIMScheduler

    transformer = build_dit("custom-D2-W16-H2/2", 4, 8, 10)
    transformer.save_pretrained(tmp_path / "dit" / "transformer")
    tiny_vae().save_pretrained(tmp_path / "dit" / "vae")
    DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        tmp_path / "dit" / "scheduler")
    (tmp_path / "dit" / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline",
                                                                   "id2label": {"0": "tench"}}))
    loaded = load_backbone(tmp_path / "dit")
    assert loaded.space == "latent" and loaded.diffusion.learn_sigma and loaded.diffusion.num_timesteps == 1000
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([1, 10])
    assert torch.allclose(loaded.net(x, t, y), transformer(x, timestep=t, class_labels=y).sample, atol=1e-6)
    # Per-block embedders that differ cannot be tied silently.
    other = build_dit("custom-D2-W16-H2/2", 4, 8, 10)
    with torch.no_grad():
        other.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    other.save_pretrained(tmp_path / "dit" / "transformer")
    with pytest.raises(CheckpointError, match="tie_embeddings=false"):
        load_backbone(tmp_path / "dit")
    assert load_backbone(tmp_path / "dit", tie_embeddings=False).net is not None


def test_bad_model_sources_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a DiT pipeline folder"):
        load_backbone(tmp_path)
    with pytest.raises(CheckpointError, match="hub id"):
        load_backbone("someone/no-such-dit")
    with pytest.raises(ConfigError, match="patch"):
        build_dit("DiT-S/4", 1, 18, 10)
    with pytest.raises(ConfigError, match="unknown DiT arch"):
        build_dit("DiT-M/2", 1, 16, 10)
    with pytest.raises(ConfigError, match="select"):
        MinimaxConfig(select="best")


def test_class_ids_map_imagenet_wnids(tiny_train):
    from gendistill.data.datasets import _subset_classes

    bb = tiny_backbone()
    assert torch.equal(resolve_class_ids(bb, tiny_train), torch.arange(10))
    with torch.device("meta"):
        net = DiffFitDiT(build_dit("custom-D2-W16-H2/4", 1, 16, 1000))
    big = Backbone(net, GaussianDiffusion.linear(), "pixel", 1, 16)
    with pytest.raises(ConfigError, match="class_ids"):
        resolve_class_ids(big, tiny_train)
    tiny_train.class_names = [f"n9999999{i}" for i in range(10)]
    with pytest.raises(ConfigError, match="not ImageNet"):
        resolve_class_ids(big, tiny_train)
    tiny_train.class_names = _subset_classes("imagewoof")[0]
    mapped = resolve_class_ids(big, tiny_train).tolist()
    assert mapped[0] == 193 and len(set(mapped)) == 10  # n02096294 (Australian terrier) is class 193
    assert resolve_class_ids(big, tiny_train, list(range(5, 15))).tolist() == list(range(5, 15))


# -------------------------------------------------------------------------------------------- sampling
def test_sampling_is_per_image_seeded_and_batch_independent():
    bb = tiny_backbone()
    for p in bb.net.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    seeds = image_seeds(0, torch.arange(3), 4)
    labels = torch.arange(3).repeat_interleave(4)
    a = sample_images(bb, labels, seeds, steps=4, cfg_scale=3.0, batch_size=12, progress=False)
    b = sample_images(bb, labels, seeds, steps=4, cfg_scale=3.0, batch_size=5, progress=False)
    assert a.shape == (12, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    alone = sample_images(bb, labels[7:8], seeds[7:8], steps=4, cfg_scale=3.0, progress=False)
    assert torch.allclose(alone, a[7:8], atol=1e-5)
    assert not torch.allclose(a[0], a[1])


def test_guidance_on_the_first_channels_only():
    from gendistill.generative.sample import guided_model

    bb = tiny_backbone("latent")
    for p in bb.net.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 10]), torch.tensor([1, 2])
    cond, uncond = bb.net(x, t, y), bb.net(x, t, torch.full_like(y, 10))
    out = guided_model(bb, y, 4.0, 3)(x, t)
    assert torch.allclose(out[:, :3], uncond[:, :3] + 4 * (cond[:, :3] - uncond[:, :3]), atol=1e-5)
    assert torch.allclose(out[:, 3:], cond[:, 3:], atol=1e-6)
    everything = guided_model(bb, y, 4.0, 0)(x, t)
    assert torch.allclose(everything[:, 3:4], uncond[:, 3:4] + 4 * (cond[:, 3:4] - uncond[:, 3:4]), atol=1e-5)


# -------------------------------------------------------------------------------------------- training
def _finetune(tiny_train, out, steps, resume=False, every=0):
    config = MinimaxConfig(**{**TINY, "finetune_steps": steps, "checkpoint_every": every, "ema_decay": 0.5})
    bb = tiny_backbone()
    train_backbone(bb, tiny_train, torch.arange(10), config.train_spec("finetune"), out, resume=resume,
                   progress=False)
    return load_backbone(out / "model")


def test_short_run_gets_a_checkpoint_without_shared_tensor_notices(tiny_train, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        _finetune(tiny_train, tmp_path / "c", 2, every=500)  # fewer steps than checkpoint_every
    assert latest_checkpoint(tmp_path / "c").name == "step_00000002"
    assert not any("Removed shared tensor" in r.getMessage() for r in caplog.records)


def test_finetune_trains_only_the_subset_and_resumes_exactly(tiny_train, tmp_path):
    full = _finetune(tiny_train, tmp_path / "a", 4)
    start = tiny_backbone()
    moved = {n for n, p in full.net.named_parameters()
             if not torch.allclose(p, dict(start.net.named_parameters())[n])}
    assert moved and moved <= set(trainable_parameter_names(full.net))
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_repr", "loss_div", "active_classes"} <= set(lines[-1])
    # Interrupted after 2 steps (checkpoint), resumed to 4: the same model.
    _finetune(tiny_train, tmp_path / "b", 2, every=2)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000002"
    import shutil

    shutil.rmtree(tmp_path / "b" / "model")
    resumed = _finetune(tiny_train, tmp_path / "b", 4, resume=True, every=2)
    for (n, p), (_, q) in zip(full.net.named_parameters(), resumed.net.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def test_corrupt_checkpoint_is_refused(tiny_train, tmp_path):
    _finetune(tiny_train, tmp_path / "c", 2, every=2)
    ckpt = latest_checkpoint(tmp_path / "c")
    for f in ckpt.iterdir():
        if f.is_file():
            f.write_bytes(b"garbage")
    import shutil

    shutil.rmtree(tmp_path / "c" / "model")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        _finetune(tiny_train, tmp_path / "c", 4, resume=True, every=2)


TWO_PROCESS_SCRIPT = """
import sys, torch
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
from test_generative import tiny_backbone, TINY
from conftest import tiny_dataset
from gendistill.generative.method import MinimaxConfig
from gendistill.generative.train import train_backbone
from pathlib import Path
torch.set_num_threads(1)
config = MinimaxConfig(**{{**TINY, "finetune_steps": 3, "ema_decay": 0.5}})
train_backbone(tiny_backbone(), tiny_dataset(), torch.arange(10), config.train_spec("finetune"), Path({out!r}),
               progress=False)
"""


def test_two_process_finetune_matches_one_process(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    outs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        script = tmp_path / f"run{procs}.py"
        script.write_text(TWO_PROCESS_SCRIPT.format(root=root, out=str(out)))
        env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
               str(29500 + procs + os.getpid() % 1000), str(script)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[procs] = load_backbone(out / "model")
    assert outs[2].info["processes"] == 2 and outs[1].info["processes"] == 1
    for (n, p), (_, q) in zip(outs[1].net.named_parameters(), outs[2].net.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), n


def test_pretrain_finetune_sample_evaluate_end_to_end(tiny_train, tiny_test, tmp_path):
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.registry import get_method
    from gendistill.runs import RunDir

    config = MinimaxConfig(**TINY)
    run = RunDir(tmp_path / "run", progress=False)
    syn = get_method("minimax").cls(config).distill(tiny_train, 2, seed=3, run=run)
    assert (tmp_path / "run" / "pretrain" / "model" / "transformer").is_dir()
    assert (tmp_path / "run" / "finetune" / "model" / "transformer").is_dir()
    assert len(list((tmp_path / "run" / "images").rglob("*.png"))) == 20
    assert syn.images.shape == (20, 1, 16, 16) and syn.meta["method"] == "minimax"
    assert len(syn.meta["image_seeds"]) == 20
    result = evaluate(syn, tiny_test, "dc", model="convnet_w8", runs=1, epochs=2, seed=0, progress=False)
    assert 0.0 <= result.mean <= 100.0 and result.reduced
    # dit = same pipeline without fine-tuning, reusing the pretrained model.
    dit_config = MinimaxConfig(**{**TINY, "pretrained": str(tmp_path / "run" / "pretrain" / "model")})
    dit = get_method("dit").cls(dit_config).distill(tiny_train, 2, seed=3)
    assert dit.meta["method"] == "dit" and not torch.equal(dit.images, syn.images)


def test_oversampling_with_selection(tiny_train):
    bb = new_backbone(tiny_train, MinimaxConfig(**TINY), 0)
    for select in ("kcenter", "confidence"):
        config = MinimaxConfig(**{**TINY, "oversample": 2.0, "select": select, "select_epochs": 1})
        pixels, labels, seeds = generate(bb, tiny_train, 2, config, progress=False)
        assert pixels.shape[0] == 20 and torch.equal(labels, torch.arange(10).repeat_interleave(2))
        assert len(set(seeds.tolist())) == 20


def test_commands_end_to_end(tmp_path, monkeypatch):
    from conftest import make_mnist_root

    from gendistill.cli import main
    from gendistill.synset.format import SyntheticSet

    root = make_mnist_root(tmp_path / "data", n_per_class=4)
    sets = [f"{k}={v}" for k, v in {**TINY, "arch": "custom-D2-W16-H2/4"}.items()]
    common = ["--dataset", "mnist", "--data-root", str(root)]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["--quiet", "pretrain", *common, "--out", str(tmp_path / "pt"), *args]) == 0
    pt, ft = str(tmp_path / "pt" / "model"), str(tmp_path / "ft" / "model")
    assert main(["--quiet", "finetune", *common, "--out", str(tmp_path / "ft"), "--model", pt, *args]) == 0
    assert main(["--quiet", "finetune", *common, "--out", str(tmp_path / "ft"), "--model", pt,
                 "--resume", "latest", *args]) == 0  # finished stage: nothing to do
    assert main(["--quiet", "sample", *common, "--out", str(tmp_path / "s"), "--model", ft, "--ipc", "1,2",
                 *args]) == 0
    one = SyntheticSet.load(tmp_path / "s" / "ipc1" / "synset")
    two = SyntheticSet.load(tmp_path / "s" / "ipc2" / "synset")
    assert one.ipc == 1 and two.ipc == 2 and one.meta["method"] == "minimax"
    assert torch.equal(one.images, two.subset(1).images)
    # sample without --dataset/--set: the model's gendistill.json supplies them; the set carries its budget
    assert main(["--quiet", "sample", "--data-root", str(root), "--out", str(tmp_path / "s2"), "--model", ft,
                 "--ipc", "1"]) == 0
    again = SyntheticSet.load(tmp_path / "s2" / "ipc1" / "synset")
    assert again.meta["dataset"] == "mnist" and again.meta["preset"] == "paper"
    assert again.meta["reduced_budget"] and any("finetune_steps" in r for r in again.meta["budget_reductions"])
    assert torch.equal(again.images, one.images)
    assert main(["--quiet", "finetune", *common, "--out", str(tmp_path / "x")]) == 2  # no model: one-line error
    assert main(["--quiet", "finetune", *common, "--out", str(tmp_path / "ft"), "--model", pt, *args]) == 2  # no reuse
    assert main(["--quiet", "sample", *common, "--out", str(tmp_path / "y"), "--model", str(tmp_path), *args]) == 2


def test_bfloat16_mixed_precision_finetune_step_is_finite(tiny_train, tmp_path):
    config = MinimaxConfig(**{**TINY, "mixed_precision": "bf16", "finetune_steps": 2})
    train_backbone(tiny_backbone(), tiny_train, torch.arange(10), config.train_spec("finetune"), tmp_path,
                   progress=False)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for k, v in last.items() if k not in ("stage",))


def test_latent_space_finetune_and_sample(tmp_path):
    from conftest import class_pattern_images

    from gendistill.data.datasets import RealDataset
    from gendistill.data.preprocessing import Preprocessing

    x, y = class_pattern_images(4, 10, 3, 16)
    rgb = RealDataset(torch.from_numpy(x), torch.from_numpy(y), [f"c{i}" for i in range(10)],
                      Preprocessing((0.5,) * 3, (0.25,) * 3), "rgb", "train")
    config = MinimaxConfig(**TINY)
    path = train_backbone(tiny_backbone("latent"), rgb, torch.arange(10), config.train_spec("finetune"),
                          tmp_path / "ft", progress=False)
    loaded = load_backbone(path)
    assert loaded.space == "latent" and loaded.vae_encoder is not loaded.vae_decoder
    pixels, labels, _ = generate(loaded, rgb, 1, config, progress=False)
    assert pixels.shape == (10, 3, 16, 16) and torch.isfinite(pixels).all()


# ------------------------------------------------------------------------------ gradient balance (issue 10)
def _finetune_logs(tiny_train, out, **overrides):
    config = MinimaxConfig(**{**TINY, "finetune_steps": 2, "checkpoint_every": 0, "log_every": 1, **overrides})
    train_backbone(tiny_backbone(), tiny_train, torch.arange(10), config.train_spec("finetune"), out,
                   progress=False)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_gradient_norms_of_each_term_are_logged_and_scale_with_lambda(tiny_train, tmp_path):
    base = _finetune_logs(tiny_train, tmp_path / "a", batch_size=20)
    tenfold = _finetune_logs(tiny_train, tmp_path / "b", batch_size=20, lambda_pos=0.02, lambda_neg=0.08)
    for lines in (base, tenfold):
        assert {"grad_norm_diffusion", "grad_norm_repr", "grad_norm_div", "grad_ratio_minimax"} <= set(lines[-1])
        assert lines[0]["grad_norm_repr"] == 0.0 and lines[-1]["grad_norm_repr"] > 0  # step 1 only fills memories
    # step 1 has no Minimax term, so both runs reach step 2 with the same weights and memories.
    assert tenfold[-1]["grad_norm_diffusion"] == pytest.approx(base[-1]["grad_norm_diffusion"], rel=1e-5)
    assert tenfold[-1]["grad_norm_repr"] == pytest.approx(10 * base[-1]["grad_norm_repr"], rel=1e-4)
    assert tenfold[-1]["grad_ratio_minimax"] == pytest.approx(10 * base[-1]["grad_ratio_minimax"], rel=1e-4)
    no_minimax = _finetune_logs(tiny_train, tmp_path / "c", lambda_pos=0.0, lambda_neg=0.0)
    assert "grad_norm_diffusion" in no_minimax[-1] and "grad_norm_repr" not in no_minimax[-1]


def test_epsilon_jacobian_rescales_the_v_model_gradient_only():
    v = GaussianDiffusion.linear(prediction="v_prediction")
    eps = GaussianDiffusion.linear(prediction="epsilon")
    t = torch.tensor([10, 900])
    x = torch.randn(2, 1, 2, 2, requires_grad=True)
    out = v.epsilon_jacobian_x0(x * 1.0, t)
    assert torch.equal(out.detach(), x.detach())
    out.sum().backward()
    a = v.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(x.grad, (1.0 / a).expand_as(x))
    y = torch.randn(2, 3)
    assert eps.epsilon_jacobian_x0(y, t) is y
    # the epsilon model's Jacobian really is the v model's divided by sqrt(abar)
    xt, pred = torch.randn(2, 1, 2, 2), torch.zeros(2, 1, 2, 2, requires_grad=True)
    gv = torch.autograd.grad(v.eps_and_x0(pred, xt, t)[1].sum(), pred)[0]
    ge = torch.autograd.grad(eps.eps_and_x0(pred, xt, t)[1].sum(), pred)[0]
    assert torch.allclose(ge, gv / a, rtol=1e-5)


def test_centred_cosine_removes_a_shared_offset():

    real, pred = ClassMemory(1, 4, 2), ClassMemory(1, 4, 2)
    offset = torch.tensor([100.0, 100.0])
    real.push(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]) + offset, torch.tensor([0, 0]))
    pred.push(torch.tensor([[0.0, 1.0]]) + offset, torch.tensor([0]))
    x = torch.tensor([[0.0, -1.0]]) + offset
    raw_rep, raw_div, _ = minimax_losses(x, torch.tensor([0]), real, pred)
    assert float(raw_div) > 0.99  # the offset makes everything alike
    rep, div, _ = minimax_losses(x, torch.tensor([0]), real, pred, center=offset)
    assert math.isclose(float(div), -1.0, abs_tol=1e-6) and math.isclose(float(rep), 1.0, abs_tol=1e-6)


def test_imagenet_subset_presets_ask_for_256_px_and_explicit_resolution_wins():
    from gendistill.presets import preferred_resolution

    for method in ("minimax", "dit"):
        for ds in ("imagenette", "imagewoof", "imageidc"):
            assert preferred_resolution(method, ds, 10) == 256
    assert preferred_resolution("minimax", "mnist", 10, preset="cpu") is None
    assert preferred_resolution("dm", "mnist", 10) is None
    assert preferred_resolution("minimax", "imagenette", 10, overrides=["resolution=128"]) == 128


def test_feature_space_minimax_embeds_decoded_predictions_with_gradient(tiny_train, tmp_path):
    from gendistill.generative.train import _minimax_space
    from gendistill.utils.errors import ConfigError

    backbone = tiny_backbone()
    spec = MinimaxConfig(**{**TINY, "minimax_space": "feature"}).train_spec("finetune")
    space = _minimax_space(backbone, tiny_train, spec, 0, torch.device("cpu"))
    x0 = (torch.rand(3, 1, 16, 16) * 2.4 - 1.2).requires_grad_(True)  # some values outside [-1, 1]
    feats = space(x0)
    expected = space.net.embed(tiny_train.preprocessing.apply((x0 + 1.0) / 2.0))
    assert feats.shape == (3, space.dim) and torch.allclose(feats, expected)
    (grad,) = torch.autograd.grad(feats.square().sum(), x0)
    assert float(grad[x0.detach().abs() > 1].abs().sum()) > 0  # no clamp: every pixel passes a gradient back
    assert not any(p.requires_grad for p in space.net.parameters())  # the feature network is frozen
    real = torch.rand(3, 1, 16, 16)  # the real batch is embedded from its own pixels, not from a decode of x0
    assert torch.allclose(space(torch.zeros_like(real), real), space.net.embed(tiny_train.preprocessing.apply(real)))
    sample = _minimax_space(backbone, tiny_train, MinimaxConfig(**TINY).train_spec("finetune"), 0, torch.device("cpu"))
    assert sample.dim == 16 * 16 and torch.equal(sample(x0), x0.flatten(1))
    with pytest.raises(ConfigError, match="minimax_space"):
        MinimaxConfig(**{**TINY, "minimax_space": "pixels"})
    logs = _finetune_logs(tiny_train, tmp_path, batch_size=20, minimax_space="feature")
    assert logs[-1]["grad_norm_repr"] > 0 and logs[-1]["grad_norm_div"] > 0 and logs[-1]["active_classes"] > 0
