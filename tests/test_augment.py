import math

import pytest
import torch

from gendistill.augment import DSA, cutmix
from gendistill.preprocessing import Preprocessing, fit_zca
from gendistill.seeding import make_generator


def _draw(dsa, family, n, size=16, seed=0):
    g = make_generator(seed)
    while True:
        d = dsa.draw(n, size, g)
        if d.family == family:
            return d


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_siamese_same_params_for_real_and_synthetic(family):
    dsa = DSA()
    x = torch.randn(6, 3, 16, 16)
    draw = _draw(dsa, family, 1)  # one group: every image of both batches gets the same parameters
    real = dsa.apply(x, draw, torch.zeros(6, dtype=torch.long))
    syn = dsa.apply(x[:2].clone(), draw, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(real[:2], syn, atol=1e-6)
    # grouped: images of the same group match, across batches of different sizes
    draw = _draw(dsa, family, 3, seed=1)
    a = dsa.apply(x, draw, torch.tensor([0, 0, 1, 1, 2, 2]))
    b = dsa.apply(x[[0, 2, 4]], draw, torch.tensor([0, 1, 2]))
    assert torch.allclose(a[[0, 2, 4]], b, atol=1e-6)


def test_non_siamese_params_differ_per_image_and_follow_generator():
    dsa = DSA("scale")
    x = torch.randn(1, 1, 16, 16).expand(8, -1, -1, -1).contiguous()
    out = dsa(x, make_generator(0))
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(out, dsa(x, make_generator(0)))
    assert not torch.equal(out, dsa(x, make_generator(1)))


def test_family_semantics():
    dsa = DSA()
    x = torch.randn(4, 3, 16, 16)
    flip = _draw(dsa, "flip", 4)
    out = dsa.apply(x, flip)
    for i in range(4):
        assert torch.equal(out[i], x[i].flip(2) if flip.values["flip"][i] else x[i])
    crop = _draw(dsa, "crop", 4)
    out = dsa.apply(x, crop)
    assert int(crop.values["dx"].abs().max()) <= 2  # round(0.125 * 16)
    for i in range(4):
        dx, dy = int(crop.values["dx"][i]), int(crop.values["dy"][i])
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        expected = padded[:, 2 + dy : 2 + dy + 16, 2 + dx : 2 + dx + 16]
        assert torch.equal(out[i], expected)
    cut = _draw(dsa, "cutout", 4)
    out = dsa.apply(torch.ones(4, 1, 16, 16), cut)
    zeros = (out == 0).sum((1, 2, 3))
    assert (zeros <= 64).all() and (zeros >= 16).all()  # an 8x8 square, clipped at the border
    color = _draw(dsa, "color", 4)
    const = torch.full((4, 3, 16, 16), 0.5)
    out = dsa.apply(const, color)  # brightness shifts a constant image; saturation/contrast keep it constant
    assert torch.allclose(out, 0.5 + (color.values["brightness"].view(4, 1, 1, 1) - 0.5), atol=1e-6)


def test_identity_geometric_params():
    dsa = DSA()
    x = torch.randn(2, 1, 16, 16)
    scale = _draw(dsa, "scale", 2)
    scale.values = {"sx": torch.ones(2), "sy": torch.ones(2)}
    assert torch.allclose(dsa.apply(x, scale), x, atol=1e-5)
    rot = _draw(dsa, "rotate", 2)
    rot.values = {"angle": torch.zeros(2)}
    assert torch.allclose(dsa.apply(x, rot), x, atol=1e-5)
    rot.values = {"angle": torch.full((2,), math.pi)}
    assert torch.allclose(dsa.apply(x, rot), x.flip(2, 3), atol=1e-5)
    assert max(abs(float(_draw(dsa, "rotate", 100).values["angle"].abs().max())), 0) <= 15 / 180 * math.pi + 1e-6


def test_differentiable():
    dsa = DSA()
    for family in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        x = torch.randn(3, 3, 16, 16, requires_grad=True)
        dsa.apply(x, _draw(dsa, family, 3)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_digits_strategy_has_no_flip():
    assert "flip" not in DSA.for_dataset(flip_ok=False).families
    assert "flip" in DSA.for_dataset(flip_ok=True).families
    with pytest.raises(ValueError):
        DSA("color_warp")


def test_zca_kornia_whitens_and_inverts():
    g = make_generator(0)
    mix = torch.randn(48, 48, generator=g)
    x = (torch.randn(2000, 48, generator=g) @ mix).reshape(2000, 3, 4, 4)
    zca = fit_zca(x, "kornia", eps=1e-6)
    white = zca.apply(x).reshape(2000, -1)
    cov = torch.cov(white.T)
    assert torch.allclose(cov, torch.eye(48), atol=0.05)
    assert torch.allclose(zca.invert(zca.apply(x)), x, atol=1e-3)
    pre = Preprocessing((0.0,) * 3, (1.0,) * 3, fit_zca(x.clamp(0, 1), "kornia", 0.1))
    px = torch.rand(5, 3, 4, 4)
    assert torch.allclose(pre.invert(pre.apply(px)), px, atol=1e-4)


def test_zca_kip_variant_is_regularised_and_per_image_normalised():
    x = torch.randn(500, 1, 4, 4)
    zca = fit_zca(x, "kip", eps=0.1)
    out = zca.apply(x * 3 + 1)  # per-image centring and scaling remove affine changes
    assert torch.allclose(out, zca.apply(x), atol=1e-4)
    assert zca.fingerprint != fit_zca(x, "kornia").fingerprint


def test_cutmix_mixes_boxes_and_returns_area_weight():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    y = torch.arange(8)
    for seed in range(20):
        out, ya, yb, lam = cutmix(x, y, make_generator(seed), prob=1.0)
        kept = (out == x).float().mean((1, 2, 3))
        changed = ya != yb
        assert torch.allclose(kept[changed], torch.full_like(kept[changed], lam), atol=1e-6)
    out, ya, yb, lam = cutmix(x, y, make_generator(0), prob=0.0)
    assert lam == 1.0 and torch.equal(out, x)


def test_dc_augment_ops_fill_with_mean_and_follow_generator():
    from gendistill.augment import DCAugment

    x = torch.rand(16, 1, 16, 16)
    aug = DCAugment("crop")
    out = aug(x, make_generator(0))
    assert torch.equal(out, aug(x, make_generator(0))) and out.shape == x.shape
    # a crop is an integer shift: every output pixel is an input pixel of that image or the batch mean
    mean = x.mean()
    for i in range(4):
        vals = set(x[i].flatten().tolist()) | {float(mean)}
        assert all(any(abs(v - u) < 1e-5 for u in vals) for v in out[i].flatten().tolist()[:40])
    noise = DCAugment("noise")(x, make_generator(1))
    assert (noise - x).abs().max() < 0.01
    rot = DCAugment("rotate", rotate=0.0)(x, make_generator(2))
    assert torch.allclose(rot, x, atol=1e-5)
    with pytest.raises(ValueError):
        DCAugment("warp")
