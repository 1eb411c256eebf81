"""DQ (Dataset Quantization): GraphCut greedy, the gradient Gram identity, bins, exact IPC, pretrained features,
GradCAM++ and the MAE pixel stage on a tiny random ViT-MAE."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gendistill.baselines.dq import (
    DatasetQuantization,
    DQConfig,
    apportion,
    bin_sizes,
    gradcam_pp,
    gradient_similarity,
    graphcut_greedy,
    last_layer_residual,
    pixel_quantize,
    quantize_bins,
)
from gendistill.utils.config import load_config
from gendistill.utils.errors import GendistillError

TINY = {"feature_model": "convnet_w8", "feature_epochs": 1}


def tiny_cfg(**kw) -> DQConfig:
    return load_config(DQConfig, {**TINY, **kw})


def _sim(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return gradient_similarity(torch.randn(n, 4, generator=g, dtype=torch.float64),
                               torch.randn(n, 3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_graphcut_greedy_picks_maximise_the_gain_and_the_objective(lam):
    sim = _sim(8)
    pool = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool)
    picks = graphcut_greedy(sim, pool, 5, lam).tolist()
    members = pool.nonzero().flatten().tolist()

    def objective(chosen):  # GraphCut f(A) = lam * sum_{i in V, a in A} s_ia - sum_{a, b in A} s_ab
        a = torch.tensor(chosen, dtype=torch.long)
        v = torch.tensor(members)
        return lam * sim[v][:, a].sum() - sim[a][:, a].sum()

    chosen = []
    for pick in picks:
        rest = [x for x in members if x not in chosen]
        gains = [lam * sim[members, x].sum() - 2 * sim[chosen, x].sum() for x in rest]
        assert pick == rest[int(torch.stack(gains).argmax())]
        # with sim(x, x) = 1 the gain is the objective's marginal gain plus 1: same argmax
        marginal = torch.stack([objective(chosen + [x]) - objective(chosen) for x in rest])
        assert pick == rest[int(marginal.argmax())]
        chosen.append(pick)
    assert 2 not in picks and len(set(picks)) == 5


def test_gram_identity_matches_explicit_gradient_features():
    g = torch.Generator().manual_seed(1)
    n, c, d = 13, 5, 7
    r = torch.randn(n, c, generator=g, dtype=torch.float64)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    r[3] = 0  # a zero gradient: cosine 0 -> similarity 0.5
    # the reference's layout: [bias grad, embedding (x) bias grad flattened class-major]
    feats = torch.cat([r, (r[:, :, None] * e[:, None, :]).flatten(1)], 1)
    norms = feats.norm(dim=1)
    expected = 0.5 + 0.5 * (feats @ feats.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    got = gradient_similarity(r, e, chunk=4)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert torch.allclose(got[3], torch.full((n,), 0.5, dtype=torch.float64))


def test_residuals_are_the_logit_gradients():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    (ref,) = torch.autograd.grad(F.cross_entropy(torch.softmax(z, 1), y, reduction="sum"), z)
    (ce,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    assert torch.allclose(last_layer_residual(z.detach(), y, "reference"), ref, atol=1e-12)
    assert torch.allclose(last_layer_residual(z.detach(), y, "cross_entropy"), ce, atol=1e-12)


def test_bin_sizes_follow_the_reference_loop():
    counts = torch.tensor([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])  # MNIST train
    sizes = bin_sizes(counts, 10)
    n = int(counts.sum())
    assert sizes.shape == (10, 10) and torch.equal(sizes.sum(0), counts)
    remaining = counts.tolist()
    for k in range(9):  # round(N/10) of the remaining pool, spread over the classes by round(f * remaining_c)
        f = round(n / 10) / sum(remaining)
        assert sizes[k].tolist() == [round(f * r) for r in remaining]
        assert abs(int(sizes[k].sum()) - round(n / 10)) <= 5
        remaining = [r - int(b) for r, b in zip(remaining, sizes[k], strict=True)]
    assert sizes[9].tolist() == remaining  # the last bin is the remainder
    balanced = bin_sizes(torch.full((10,), 60), 10)
    assert torch.equal(balanced, torch.full((10, 10), 6))


def test_quantize_bins_partition_the_class_greedily():
    sim = _sim(23, seed=3)
    bins = quantize_bins(sim, [5, 5, 5, 8])
    assert [len(b) for b in bins] == [5, 5, 5, 8]
    assert sorted(torch.cat(bins).tolist()) == list(range(23))
    pool = torch.ones(23, dtype=torch.bool)
    assert torch.equal(bins[0], graphcut_greedy(sim, pool, 5))
    pool[bins[0]] = False
    assert torch.equal(bins[1], graphcut_greedy(sim, pool, 5))  # the second bin: GraphCut on the remaining pool


def test_apportion_is_exact_and_unbiased():
    sizes = torch.tensor([600] * 9 + [605])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([apportion(sizes, 3, gen) for _ in range(3000)])
    assert torch.all(draws.sum(1) == 3) and draws.min() >= 0 and draws.max() <= 1
    quota = 3 * sizes / sizes.sum()
    assert torch.allclose(draws.double().mean(0), quota.double(), atol=0.04)
    assert torch.equal(apportion(torch.tensor([10, 20, 30]), 6, gen), torch.tensor([1, 2, 3]))  # integral quotas


def test_dq_selects_exactly_ipc_real_images_per_class_deterministically(tiny_train):
    syn = DatasetQuantization(tiny_cfg()).distill(tiny_train, 3, seed=5, progress=False)
    idx = syn.source_indices
    assert torch.equal(torch.bincount(syn.labels, minlength=10), torch.full((10,), 3))
    assert torch.equal(tiny_train.labels[idx], syn.labels) and len(set(idx.tolist())) == 30
    assert torch.equal(tiny_train.images(idx), syn.images)
    assert torch.equal(torch.tensor(syn.meta["dq_samples_per_bin"]).sum(0), torch.full((10,), 3))
    assert syn.meta["pixel_stage"] is None and "feature network" in " ".join(syn.meta["deviations"])
    again = DatasetQuantization(tiny_cfg()).distill(tiny_train, 3, seed=5, progress=False)
    assert torch.equal(again.source_indices, idx)
    other = DatasetQuantization(tiny_cfg()).distill(tiny_train, 3, seed=6, progress=False)
    assert not torch.equal(other.source_indices, idx)


def test_pretrained_resnet18_features_from_a_local_file(tmp_path, tiny_train, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(GendistillError, match="not on this machine"):
        DatasetQuantization(tiny_cfg(pretrained_weights="hub")).distill(tiny_train, 1, progress=False)
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    cfg = tiny_cfg(pretrained_weights=str(tmp_path / "r18.pth"), pretrained_image_size=32)
    syn = DatasetQuantization(cfg).distill(tiny_train, 1, seed=0, progress=False)
    assert "ResNet-18" in syn.meta["feature_network"] and "random first conv" in syn.meta["feature_network"]
    assert not any("feature network" in d for d in syn.meta["deviations"])
    assert torch.equal(torch.bincount(syn.labels, minlength=10), torch.ones(10, dtype=torch.long))
    tiny_mae(image_size=32).save_pretrained(tmp_path / "mae")  # GradCAM++ of the ImageNet net on the MAE input
    pix = DatasetQuantization(dataclasses.replace(cfg, mae_weights=str(tmp_path / "mae"))).distill(
        tiny_train, 1, seed=0, progress=False)
    assert torch.equal(pix.source_indices, syn.source_indices)
    assert pix.meta["pixel_stage"]["ranking"].startswith("GradCAM++ of the ImageNet ResNet-18")
    assert pix.meta["pixel_stage"]["patches"] == 64 and not torch.equal(pix.images, syn.images)
    (tmp_path / "bad.pth").write_bytes(b"nope")
    with pytest.raises(GendistillError, match="cannot read"):
        DatasetQuantization(tiny_cfg(pretrained_weights=str(tmp_path / "bad.pth"))).distill(tiny_train, 1)


def test_gradcam_pp_follows_the_activation_of_a_one_channel_net():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[4].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        net[4].bias.zero_()
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 1:3, 5:7] = 1.0
    x[1, 0, 4:8, 0:2] = 0.5
    cam = gradcam_pp(net, x)
    assert cam.shape == (2, 8, 8)
    expected = x[:, 0] / x[:, 0].flatten(1).max(1).values[:, None, None]  # one channel, positive weight
    assert torch.allclose(cam, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------- pixel stage
def tiny_mae(image_size: int = 16, patch_size: int = 4, **kw):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=16,
                                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                       decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                       decoder_num_attention_heads=2, decoder_intermediate_size=32, mask_ratio=0.75,
                                       norm_pix_loss=False, **kw)
    torch.manual_seed(0)
    return transformers.ViTMAEForPreTraining(config).eval()


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), -1)


def test_pixel_stage_keeps_the_top_cam_patches_and_changes_only_the_dropped_ones():
    mae = tiny_mae()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 1, 16, 16), generator=g).float() / 255
    scores = torch.rand(3, 4, 4, generator=g)

    out, mask = pixel_quantize(pixels, mae, 0.2, cam=lambda px, xn: scores)
    assert out.shape == pixels.shape and mask.shape == (3, 16) and mae.config.mask_ratio == 0.75
    kept = mask == 0
    assert torch.all(kept.sum(1) == int(16 * 0.8))
    top = torch.argsort(scores.flatten(1), dim=1, descending=True)[:, :12]
    assert torch.equal(torch.sort(top, 1).values, torch.stack([k.nonzero().flatten() for k in kept]))
    before, after = _patches(pixels, 4), _patches(out, 4)
    assert torch.allclose(after[kept], before[kept], atol=1e-5)
    assert (after[~kept] - before[~kept]).abs().amax(-1).min() > 1e-3


def test_pixel_stage_resizes_through_a_larger_mae_and_rejects_normalised_targets():
    mae = tiny_mae(image_size=32)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out, mask = pixel_quantize(pixels, mae, 0.2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and mask.shape == (2, 64) and torch.all((mask == 0).sum(1) == 51)
    again, _ = pixel_quantize(pixels, mae, 0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    mae.config.norm_pix_loss = True
    with pytest.raises(GendistillError, match="norm_pix_loss"):
        pixel_quantize(pixels, mae, 0.2)


def test_dq_with_a_local_mae_folder(tmp_path, tiny_train):
    tiny_mae().save_pretrained(tmp_path / "mae")
    cfg = tiny_cfg(mae_weights=str(tmp_path / "mae"), mask_ratio=0.25, pixel_batch_size=7)
    syn = DatasetQuantization(cfg).distill(tiny_train, 2, seed=0, progress=False)
    plain = DatasetQuantization(dataclasses.replace(cfg, mae_weights="")).distill(tiny_train, 2, seed=0,
                                                                                  progress=False)
    assert torch.equal(syn.source_indices, plain.source_indices)  # the pixel stage does not change the selection
    assert syn.meta["pixel_stage"]["patches"] == 16 and syn.meta["pixel_stage"]["patches_kept"] == 12
    assert any("GradCAM++ of the dataset feature network" in d for d in syn.meta["deviations"])
    new = (tiny_train.preprocessing.invert(syn.images) * 255).round()
    old = tiny_train.pixels[syn.source_indices].float()
    changed = (_patches(new, 4) != _patches(old, 4)).any(-1).sum(1)
    assert changed.max() <= 4 and changed.sum() > 0  # only the 4 dropped patches of 16 may change
    again = DatasetQuantization(cfg).distill(tiny_train, 2, seed=0, progress=False)
    assert torch.equal(again.images, syn.images)
    with pytest.raises(GendistillError, match="not a folder"):
        DatasetQuantization(tiny_cfg(mae_weights=str(tmp_path / "none"))).distill(tiny_train, 1, progress=False)


def test_the_resnet_sees_cifar10_in_dq_normalisation(tmp_path, tiny_train):
    from conftest import make_cifar10_root

    from gendistill.baselines.dq import DQ_NORMALISATION, dq_renormalisation
    from gendistill.data.datasets import load_dataset

    train = load_dataset("cifar10", make_cifar10_root(tmp_path)).train
    scale, shift = dq_renormalisation(train)
    pixels = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DQ_NORMALISATION["cifar10"])
    renormalised = train.preprocessing.apply(pixels) * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
    assert torch.allclose(renormalised, (pixels - mean) / std, atol=1e-5)
    assert dq_renormalisation(tiny_train) is None
