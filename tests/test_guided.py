"""MGD3 and IGD: the mode assignment by hand, the guidance terms against finite differences on a tiny model, and both
methods end to end on the dit base and on a Minimax fine-tuned model."""

from __future__ import annotations

import math

import pytest
import torch

from gendistill.generative.backbone import Backbone, DiffFitDiT, build_dit
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.guided import (
    IGDConfig,
    IGDDistiller,
    InfluenceGuide,
    MGD3Distiller,
    ModeGuide,
    class_modes,
    real_gradients,
    surrogate_snapshots,
)
from gendistill.generative.sample import guided_model
from gendistill.presets import resolve_config


def tiny_backbone(seed: int = 1) -> Backbone:
    net = DiffFitDiT(build_dit("custom-D2-W16-H2/4", 1, 16, 10, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking model: DiT's zero-initialised output layer would hide every gradient
        for p in net.transformer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return Backbone(net, GaussianDiffusion.linear(), "pixel", 1, 16, latent_scale=1.0)


def test_modes_are_the_per_class_kmeans_centroids_and_sample_k_gets_mode_k(tiny_train):
    from sklearn.cluster import KMeans

    from gendistill.utils.seeding import derive_seed

    bb = tiny_backbone()
    modes = class_modes(bb, tiny_train, 2, seed=0)
    assert modes.shape == (10, 2, 1, 16, 16)
    rows = (tiny_train.labels == 3).nonzero().squeeze(1)
    z = (tiny_train.pixels[rows].float() / 255.0 * 2 - 1).flatten(1).double().numpy()  # pixel space: 2p - 1
    km = KMeans(n_clusters=2, random_state=derive_seed(0, "mgd3", 3) % 2**31, n_init="auto").fit(z)
    assert torch.allclose(modes[3].flatten(1).double(), torch.from_numpy(km.cluster_centers_), atol=1e-5)
    guide = ModeGuide(modes.flatten(0, 1)[[6, 7]], strength=0.1, stop=25)  # class 3's modes 0 and 1
    x0, x_next = torch.zeros(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    log_var = torch.full_like(x0, math.log(0.25))  # sigma 0.5
    pulled = guide(index=30, x_next=x_next, x0=x0, log_var=log_var)
    assert torch.allclose(pulled, x_next + 0.1 * 0.5 * (modes[3] - x0))
    assert torch.equal(guide(index=25, x_next=x_next, x0=x0, log_var=log_var), x_next)  # stopped at step 25


@pytest.fixture
def influence(tiny_train):
    cfg = IGDConfig(igd_model="convnet_w8", igd_epochs=1, igd_checkpoints=[0, 1], igd_grad_ipc=4, cfg_scale=1.0)
    net, snaps = surrogate_snapshots(tiny_train, cfg, seed=0)
    for p in net.parameters():
        p.requires_grad_(False)
    targets = real_gradients(net, snaps, tiny_train, cfg.igd_grad_ipc)
    return cfg, net, snaps, targets


def test_igd_surrogate_is_trained_once_and_cached_on_disk(tiny_train, tmp_path, monkeypatch):
    import gendistill.evaluation.trainer as trainer

    cfg = IGDConfig(igd_model="convnet_w8", igd_epochs=2, igd_checkpoints=[0, 2], cfg_scale=1.0)
    net, snaps = surrogate_snapshots(tiny_train, cfg, seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("igd-surrogate-*.safetensors"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached surrogate was trained again")

    monkeypatch.setattr(trainer, "train_network", no_training)
    net2, snaps2 = surrogate_snapshots(tiny_train, cfg, seed=3, cache_dir=tmp_path)
    for a, b in zip(snaps, snaps2, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters(), strict=True))
    assert not torch.equal(snaps[0][next(iter(snaps[0]))], snaps[1][next(iter(snaps[1]))])  # epochs 0 and 2 differ
    with pytest.raises(AssertionError, match="trained again"):  # another seed is another surrogate
        surrogate_snapshots(tiny_train, cfg, seed=4, cache_dir=tmp_path)


def test_influence_term_is_the_gradient_of_its_loss_by_finite_differences(tiny_train, influence):
    torch.manual_seed(0)
    cfg, net, snaps, targets = influence
    bb = tiny_backbone()
    net.double()
    bb.net.double()
    snaps = [{k: v.double() for k, v in s.items()} for s in snaps]
    targets = [t.double() for t in targets]
    labels = torch.tensor([2, 5])
    chain = bb.diffusion.respace(50)
    model = guided_model(bb, labels, 1.0, 0)
    guide = InfluenceGuide(bb, tiny_train, net, snaps, targets, labels, [[] for _ in range(10)], model, cfg)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    t = torch.full((2,), 35, dtype=torch.long)
    grad, _ = guide._influence(x, t, chain)

    def loss(xx: torch.Tensor) -> float:
        from torch.func import functional_call

        out = model(xx, chain.timestep_map[t]).double()
        eps, x0 = chain.eps_and_x0(chain.split_output(out, 1)[0], xx, t)
        images = tiny_train.preprocessing.apply((x0 + 1) / 2)
        total = 0.0
        for params, target in zip(snaps, targets, strict=True):
            names = list(params)
            for i in range(2):
                theta = [params[n].detach().requires_grad_(True) for n in names]
                ce = torch.nn.functional.cross_entropy(
                    functional_call(net, dict(zip(names, theta, strict=True)), (images[i:i + 1],)), labels[i:i + 1])
                g = torch.cat([gr.flatten() for gr in torch.autograd.grad(ce, theta)])
                ref = target[int(labels[i])]
                total += float(1 - g @ ref / (g.norm() * ref.norm() + 1e-6))
        return total / len(snaps)

    h = 1e-4
    for idx in [(0, 0, 3, 4), (1, 0, 8, 8), (0, 0, 12, 1)]:
        up, down = x.clone(), x.clone()
        up[idx] += h
        down[idx] -= h
        numeric = (loss(up) - loss(down)) / (2 * h)
        assert grad[idx].item() == pytest.approx(numeric, rel=1e-3, abs=1e-7)


def test_deviation_term_is_the_cosine_gradient_toward_the_most_similar_memory_entry(tiny_train, influence):
    cfg, net, snaps, targets = influence
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    near, far = x[0] + 0.1 * torch.randn(1, 4, 4, dtype=torch.float64), -x[0]
    memory = [[] for _ in range(10)]
    memory[3] = [far, near]
    guide = InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([3]), memory, None, cfg)
    d = guide._deviation(x)
    v = x.flatten().clone().requires_grad_(True)
    cos = torch.nn.functional.cosine_similarity(v, near.flatten(), dim=0)
    (expected,) = torch.autograd.grad(cos, v)
    assert torch.allclose(d.flatten(), expected, atol=1e-10)
    assert torch.equal(InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([4]), memory, None,
                                      cfg)._deviation(x), torch.zeros_like(x))  # an empty class memory: no term
    # one batch mixing a full, an empty and a one-entry memory: each row as if it were alone
    memory[6] = [x[0] + 0.5]
    batch = torch.cat([x, torch.randn(2, 1, 4, 4, dtype=torch.float64)])
    mixed = InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([3, 4, 6]), memory, None,
                           cfg)._deviation(batch)
    for i, label in enumerate([3, 4, 6]):
        alone = InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([label]), memory, None, cfg)
        assert torch.allclose(mixed[i:i + 1], alone._deviation(batch[i:i + 1]), atol=1e-12)
    assert torch.equal(mixed[1], torch.zeros_like(mixed[1]))


def test_centred_deviation_is_the_gradient_of_the_cosine_around_the_real_mean(tiny_train, influence):
    cfg, net, snaps, targets = influence
    torch.manual_seed(1)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    mu = torch.randn(1, 4, 4, dtype=torch.float64) - 1.0
    memory = [[] for _ in range(10)]
    memory[3] = [torch.randn(1, 4, 4, dtype=torch.float64), x[0] + 0.2]
    memory[5] = [torch.randn(1, 4, 4, dtype=torch.float64)]
    abar = torch.tensor([0.3, 0.8], dtype=torch.float64)
    guide = InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([3, 5]), memory, None, cfg, mu)
    d = guide._deviation(x, abar)
    for i, label in enumerate([3, 5]):
        v = x[i].flatten().clone().requires_grad_(True)
        cos = torch.stack([torch.nn.functional.cosine_similarity(v - abar[i].sqrt() * mu.flatten(),
                                                                 (m - mu).flatten(), dim=0) for m in memory[label]])
        (expected,) = torch.autograd.grad(cos.max(), v)  # the most similar entry, around the mean
        assert torch.allclose(d[i].flatten(), expected, atol=1e-10)
    plain = InfluenceGuide(None, tiny_train, net, snaps, targets, torch.tensor([3, 5]), memory, None, cfg)
    assert not torch.allclose(plain._deviation(x, abar), d)  # the centring changes the term


@pytest.mark.parametrize("name,cls", [("mgd3", MGD3Distiller), ("igd", IGDDistiller)])
def test_guided_methods_run_on_the_base_and_on_a_minimax_finetuned_model(tiny_train, tmp_path, name, cls):
    from gendistill.generative.method import pretrain

    cfg = resolve_config(name, "tiny", 2, preset="smoke")
    model = pretrain(tiny_train, cfg, tmp_path / "pre", progress=False)
    base = cls(resolve_config(name, "tiny", 2, preset="smoke", overrides=[f"pretrained={model}"]))
    syn = base.distill(tiny_train, 2, seed=0, progress=False)
    assert syn.images.shape == (20, 1, 16, 16) and torch.isfinite(syn.images).all()
    assert syn.meta["method"] == name and str(model) in syn.meta["backbone"]
    tuned = cls(resolve_config(name, "tiny", 2, preset="smoke", overrides=[f"pretrained={model}", "finetune=true"]))
    assert tuned.finetunes
    syn2 = tuned.distill(tiny_train, 2, seed=0, progress=False)
    assert "temporary" in syn2.meta["backbone"] or "finetune" in syn2.meta["backbone"]
    assert not torch.equal(syn.images, syn2.images)


def test_mgd3_and_igd_change_the_unguided_samples(tiny_train, tmp_path):
    from gendistill.generative.method import DiTDistiller, pretrain

    cfg = resolve_config("mgd3", "tiny", 2, preset="smoke")
    model = pretrain(tiny_train, cfg, tmp_path / "pre", progress=False)
    plain = DiTDistiller(resolve_config("dit", "tiny", 2, preset="smoke", overrides=[f"pretrained={model}"]))
    ref = plain.distill(tiny_train, 2, seed=0, progress=False).images
    for name, cls in (("mgd3", MGD3Distiller), ("igd", IGDDistiller)):
        out = cls(resolve_config(name, "tiny", 2, preset="smoke", overrides=[f"pretrained={model}"])).distill(
            tiny_train, 2, seed=0, progress=False).images
        assert not torch.allclose(out, ref), name
    off = MGD3Distiller(resolve_config("mgd3", "tiny", 2, preset="smoke",
                                       overrides=[f"pretrained={model}", "mode_lambda=0.0"]))
    assert torch.allclose(off.distill(tiny_train, 2, seed=0, progress=False).images, ref, atol=1e-6)


@pytest.mark.parametrize("dataset", ["imagenette", "imagewoof"])
@pytest.mark.parametrize("ipc", [1, 10, 20, 50, 70, 100])
def test_imagenet_subset_presets_guide_the_minimax_reference_backbone_with_the_authors_settings(dataset, ipc):
    """mgd3 and igd have the published presets of ImageNette/ImageWoof: the Minimax reference's backbone, VAEs and
    sampler (so the three methods differ only in their guidance), the authors' guidance settings, no fine-tuning."""
    minimax = resolve_config("minimax", dataset, ipc)
    shared = ("pretrained", "resolution", "vae_encoder", "vae_decoder", "sample_steps", "cfg_scale", "cfg_channels",
              "finetune_steps", "batch_size", "lr", "lambda_pos", "lambda_neg", "memory_size", "device")
    mgd3, igd = resolve_config("mgd3", dataset, ipc), resolve_config("igd", dataset, ipc)
    for cfg in (mgd3, igd):
        assert {k: getattr(cfg, k) for k in shared} == {k: getattr(minimax, k) for k in shared}
        assert cfg.pretrained == "facebook/DiT-XL-2-256" and cfg.finetune is False
    assert (mgd3.mode_lambda, mgd3.mode_stop) == (0.1, 25)
    assert (igd.igd_gm_scale, igd.igd_dev_scale, igd.igd_low, igd.igd_high) == (5.0, 120.0, 30, 45)
    assert (igd.igd_model, igd.igd_epochs, igd.igd_checkpoints) == ("convnet_d6", 50, [0, 5, 16, 40])


def test_igd_cpu_preset_scales_the_deviation_strength_to_28px_images():
    """The authors' gamma 120 acts on 4x32x32 latent values; the cpu preset gives 28x28 pixels the same push."""
    cfg = resolve_config("igd", "fashion_mnist", 10, preset="cpu")
    assert cfg.igd_dev_scale == pytest.approx(120.0 * 28 * 28 / (4 * 32 * 32), abs=0.1)
    assert resolve_config("igd", "imagewoof", 10).igd_dev_scale == 120.0  # the published preset keeps the authors'


def test_igd_sampling_seeds_share_the_run_seeds_surrogate(tiny_train, tmp_path, monkeypatch):
    """Sets drawn at several ``sample_seed``s from one run share its trained components: IGD's surrogate is seeded
    by the run's seed, the sampling noise by the sampling seed."""
    import gendistill.generative.guided as guided
    from gendistill.generative.method import pretrain

    cfg = resolve_config("igd", "tiny", 2, preset="smoke")
    model = pretrain(tiny_train, cfg, tmp_path / "pre", progress=False)
    seeds = []
    real = guided.surrogate_snapshots

    def spy(train, config, seed, progress=False, cache_dir=None):
        seeds.append(seed)
        return real(train, config, seed, progress, cache_dir=tmp_path)

    monkeypatch.setattr(guided, "surrogate_snapshots", spy)
    sets = [IGDDistiller(resolve_config("igd", "tiny", 2, preset="smoke", overrides=[
        f"pretrained={model}", f"sample_seed={s}"])).distill(tiny_train, 2, seed=5, progress=False) for s in (1, 2)]
    assert seeds == [5, 5]
    assert not torch.equal(sets[0].images, sets[1].images)  # the sampling noise differs
    assert [s.meta["sample_seed"] for s in sets] == [1, 2]
