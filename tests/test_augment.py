import math

import pytest
import torch

from gendistill.data.preprocessing import Preprocessing, fit_zca
from gendistill.nn.augment import DSA, cutmix
from gendistill.utils.seeding import make_generator


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


# ------------------------------------------------------------------ DC augmentation (reference utils.augment)
def test_dc_crop_is_a_shift_with_mean_fill_hand_computed():
    from gendistill.nn.augment import DCAugment

    x = torch.arange(16.0).view(1, 1, 4, 4)
    fill = torch.tensor([-1.0])
    out = DCAugment.apply_crop(x, torch.tensor([[-1, 2]]), fill)  # out[y, x] = in[y - 1, x + 2]
    expected = torch.tensor([[-1, -1, -1, -1], [2, 3, -1, -1], [6, 7, -1, -1], [10, 11, -1, -1.0]])
    assert torch.equal(out[0, 0], expected)


def test_dc_crop_shift_range_is_permutation_of_2crop_minus_crop():
    from gendistill.nn.augment import DCAugment

    shifts = DCAugment(crop=4).draw_crop(4000, make_generator(0))
    assert sorted(shifts.unique().tolist()) == list(range(-4, 4))  # [-4, 3], never +4


def test_dc_scale_nearest_resize_zero_fill_hand_computed():
    import torch.nn.functional as F

    from gendistill.nn.augment import DCAugment

    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = DCAugment.apply_scale(x, torch.tensor([[2, 2]]))  # 4x4 -> 2x2 nearest, centred on zeros
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 3, 0], [0, 9, 11, 0], [0, 0, 0, 0.0]])
    assert torch.equal(out[0, 0], expected)
    # larger and mixed sizes against the reference's construction (interpolate, pad to max, centre crop)
    x = torch.randn(6, 2, 28, 28)
    sizes = torch.tensor([[25, 31], [33, 22], [28, 28], [22, 33], [24, 24], [24, 27]])
    out = DCAugment.apply_scale(x, sizes)
    for i, (h, w) in enumerate(sizes.tolist()):
        tmp = F.interpolate(x[i : i + 1], [h, w])[0]
        m = max(h, w, 28)
        canvas = torch.zeros(2, m, m)
        canvas[:, (m - h) // 2 : (m - h) // 2 + h, (m - w) // 2 : (m - w) // 2 + w] = tmp
        r = (m - 28) // 2
        assert torch.equal(out[i], canvas[:, r : r + 28, r : r + 28])


def test_dc_scale_sizes_cover_plus_minus_20_percent():
    from gendistill.nn.augment import DCAugment

    sizes = DCAugment(scale=0.2).draw_scale(5000, 28, 28, make_generator(0))
    assert sizes.min() == int(0.8 * 28) and sizes.max() == 33  # int(U(0.8, 1.2) * 28) in [22, 33]


def test_dc_rotate_integer_angles_cubic_mean_fill():
    import numpy as np
    from scipy.ndimage import rotate

    from gendistill.nn.augment import DCAugment

    angles = DCAugment(rotate=45).draw_angle(20000, make_generator(0))
    assert angles.dtype == torch.long and angles.min() == -45 and angles.max() == 44
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = DCAugment.apply_rotate(x, torch.tensor([90]), cval=0.0)  # a quarter turn is exact: np.rot90
    assert torch.allclose(out[0, 0], torch.from_numpy(np.rot90(x[0, 0].numpy()).copy()), atol=1e-5)
    x = torch.randn(3, 1, 28, 28)
    out = DCAugment.apply_rotate(x, torch.tensor([30, -45, 30]), cval=0.25)
    ref = rotate(x[1].numpy(), angle=-45, axes=(-2, -1), cval=0.25)  # reshape=True, order 3, then centre crop
    r = (ref.shape[-1] - 28) // 2
    assert torch.allclose(out[1], torch.from_numpy(ref[:, r : r + 28, r : r + 28]), atol=1e-5)
    corner = DCAugment.apply_rotate(torch.ones(1, 1, 28, 28), torch.tensor([45]), cval=0.25)[0, 0, 0, 0]
    assert abs(float(corner) - 0.25) < 1e-3  # pixels rotated in from outside take the fill value


def test_dc_augment_one_op_per_image_and_follows_generator():
    from gendistill.nn.augment import DCAugment

    x = torch.rand(64, 1, 16, 16)
    aug = DCAugment("crop_scale_rotate")
    out = aug(x, make_generator(0))
    assert torch.equal(out, aug(x, make_generator(0))) and not torch.equal(out, aug(x, make_generator(1)))
    noise = DCAugment("crop_noise", noise=0.001)(x, make_generator(1))
    small = (noise - x).abs().flatten(1).max(1).values < 0.01
    assert 0 < int(small.sum()) < 64  # some images got noise, the others a crop
    with pytest.raises(ValueError):
        DCAugment("warp")


# ------------------------------------------------------------------------- siamese DSA, family per group
def test_siamese_draw_gives_each_class_group_its_own_family():
    from gendistill.nn.augment import GroupDraw

    dsa = DSA("color_crop_cutout_flip_scale_rotate")
    g = make_generator(0)
    draw = dsa.draw_siamese(10, 16, g)
    assert isinstance(draw, GroupDraw) and len(draw.draws) > 1  # 10 classes draw several families
    while len(draw.draws) < 2 or "flip" in draw.draws:
        draw = dsa.draw_siamese(2, 16, g)  # two classes, two different families
    groups_real = torch.tensor([0, 0, 0, 1, 1, 1])
    groups_syn = torch.tensor([0, 1])
    x = torch.randn(2, 3, 16, 16)
    real = dsa.apply(x.repeat_interleave(3, 0), draw, groups_real)
    syn = dsa.apply(x, draw, groups_syn)
    for c in range(2):  # a class's real and synthetic rows share the class's family and parameters
        family = list(draw.draws)[int(draw.family_of_group[c])]
        alone = dsa.apply(x[c : c + 1], draw.draws[family], torch.tensor([c]))
        assert torch.allclose(syn[c : c + 1], alone, atol=1e-6)
        assert torch.allclose(real[3 * c : 3 * c + 3], alone.expand(3, -1, -1, -1), atol=1e-6)
    assert not torch.allclose(syn[0] - x[0], syn[1] - x[1])


def test_siamese_group_draw_is_differentiable():
    dsa = DSA("color_crop_scale")
    draw = dsa.draw_siamese(4, 8, make_generator(3))
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    dsa.apply(x, draw, torch.arange(4).repeat_interleave(2)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_siamese_group_draw_gradient_is_each_class_applied_alone():
    dsa = DSA("color_crop_cutout_scale_rotate")
    draw = dsa.draw_siamese(6, 8, make_generator(5))
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    w = torch.randn(6, 1, 8, 8)
    (dsa.apply(x, draw, torch.arange(6)) * w).sum().backward()
    for c in range(6):
        xc = x.detach()[c : c + 1].clone().requires_grad_()
        family = list(draw.draws)[int(draw.family_of_group[c])]
        (dsa.apply(xc, draw.draws[family], torch.tensor([c])) * w[c : c + 1]).sum().backward()
        assert torch.allclose(x.grad[c : c + 1], xc.grad, atol=1e-6)
