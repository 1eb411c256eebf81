"""Numerical tests of the baselines' losses, DD's hypergradient, DSA inside the loops, presets and resume."""

import dataclasses

import pytest
import torch
from test_registry import tiny_config

from gendistill.nn.augment import DSA, GroupDraw
from gendistill.nn.nets import create_network
from gendistill.presets import resolve_config
from gendistill.registry import get_method
from gendistill.runs import RunDir
from gendistill.utils.config import load_config


def test_dc_distance_on_hand_made_gradients():
    from gendistill.baselines.matching import gradient_distance

    gs = {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([5.0, 5.0])}
    gr = {"w": torch.tensor([[2.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([-5.0, 1.0])}
    # row 1 parallel (distance ~0), row 2 orthogonal (distance 1); biases ignored
    assert float(gradient_distance(gs, gr, "ours")) == pytest.approx(1.0, abs=1e-5)
    assert float(gradient_distance(gs, gr, "mse")) == pytest.approx(1 + 2 + 100 + 16)
    flat_s, flat_r = torch.tensor([1.0, 0, 0, 1, 5, 5]), torch.tensor([2.0, 0, 1, 0, -5, 1])
    cos = float(flat_s @ flat_r / (flat_s.norm() * flat_r.norm()))
    assert float(gradient_distance(gs, gr, "cos")) == pytest.approx(1 - cos, abs=1e-5)
    conv_s = {"c": torch.ones(2, 3, 2, 2)}
    conv_r = {"c": torch.cat([torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)])}
    assert float(gradient_distance(conv_s, conv_r, "ours")) == pytest.approx(2.0, abs=1e-5)  # 0 + (1 - (-1))
    batched = {"w": torch.stack([gs["w"], gs["w"]])}
    assert float(gradient_distance(batched, {"w": torch.stack([gr["w"], gs["w"]])}, "ours", batch_dims=1)) == \
        pytest.approx(1.0, abs=1e-5)


def test_per_class_gradients_loop_equals_vmap():
    from gendistill.baselines.matching import per_class_gradients

    net = create_network("convnet_w8", 1, 3, 16, seed=0)
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(3, 4, 1, 16, 16, requires_grad=True)
    y = torch.arange(3)[:, None].expand(3, 4)
    a = per_class_gradients(net, params, x, y, mode="loop")
    b = per_class_gradients(net, params, x, y, mode="vmap")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5)
    direct = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x[1]), y[1]), list(net.parameters()))
    assert torch.allclose(a["classifier.weight"][1], direct[-2], atol=1e-6)
    sum(v.sum() for v in a.values()).backward()
    assert x.grad is not None  # differentiable w.r.t. the synthetic images


def test_dm_loss_on_hand_made_features():
    from gendistill.baselines.dm import mean_embedding_loss

    real = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # class means (2, 0), (0, 2)
    syn = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert float(mean_embedding_loss(real, syn, 2)) == pytest.approx(4.0)


def test_dd_hypergradient_matches_finite_differences():
    from gendistill.baselines.dd import unrolled_loss

    torch.manual_seed(0)
    net = create_network("mlp", 1, 3, 4, seed=0, width=6).double()
    params0 = {k: v.detach().requires_grad_(True) for k, v in net.named_parameters()}
    images = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(3).expand(2, 3)
    raw = torch.tensor([-1.0, -2.0, -1.5, -0.5], dtype=torch.float64, requires_grad=True)
    real_x, real_y = torch.randn(9, 1, 4, 4, dtype=torch.float64), torch.arange(3).repeat(3)
    loss = unrolled_loss(net, params0, images, labels, raw, real_x, real_y)
    g_img, g_raw = torch.autograd.grad(loss, [images, raw])
    eps = 1e-6

    def f(img, r):
        return float(unrolled_loss(net, params0, img, labels, r, real_x, real_y).detach())

    for idx in [(0, 0, 0, 1, 2), (1, 2, 0, 3, 3), (0, 1, 0, 0, 0)]:
        plus, minus = images.detach().clone(), images.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        assert float(g_img[idx]) == pytest.approx((f(plus, raw) - f(minus, raw)) / (2 * eps), rel=1e-4, abs=1e-8)
    for t in range(4):
        plus, minus = raw.detach().clone(), raw.detach().clone()
        plus[t] += eps
        minus[t] -= eps
        assert float(g_raw[t]) == pytest.approx((f(images, plus) - f(images, minus)) / (2 * eps), rel=1e-4,
                                                abs=1e-8)


@pytest.mark.parametrize("name", ["dm", "dsa", "cafe_dsa"])
def test_siamese_augmentation_inside_the_loop(name, tiny_train, monkeypatch):
    """Real and synthetic images of a class get the same draw and group (= class) in every matching step."""
    calls = []
    original = DSA.apply

    def spy(self, x, draw, groups=None):
        if isinstance(draw, GroupDraw):  # top-level siamese calls (a GroupDraw applies its families inside)
            # keep the draw itself: holding it stops CPython reusing its id for a later draw
            calls.append((draw, None if groups is None else groups.clone(), x.shape[0]))
        return original(self, x, draw, groups)

    monkeypatch.setattr(DSA, "apply", spy)
    get_method(name).cls(tiny_config(name)).distill(tiny_train, 2, seed=0)
    siamese = [c for c in calls if c[1] is not None]
    assert siamese, "no siamese augmentation happened"
    by_draw: dict = {}
    for draw, groups, n in siamese:
        by_draw.setdefault(id(draw), []).append((groups, n))
    for pairs in by_draw.values():
        assert len(pairs) == 2  # the real batch and the synthetic batch
        (g_real, _), (g_syn, _) = pairs
        assert set(g_real.tolist()) == set(g_syn.tolist()) == set(range(10))
        assert torch.equal(g_real, torch.sort(g_real).values)  # class-major: group = class


@pytest.mark.parametrize("name", ["dc", "dsa", "dm", "cafe", "dd"])
def test_killed_run_resumes_to_the_same_result(name, tiny_train, tmp_path, monkeypatch):
    extra = {"max_outer": 1} if name == "cafe" else {}  # one image update per CAFE round
    cfg = dataclasses.replace(tiny_config(name), iterations=4, **extra)
    cls = get_method(name).cls
    full = cls(cfg).distill(tiny_train, 2, seed=1, run=RunDir(tmp_path / "a", checkpoint_every=2, progress=False))
    original = cls.step
    count = {"n": 0}

    def dying(self, it, *args):
        count["n"] += 1
        if count["n"] == 4:
            raise KeyboardInterrupt
        return original(self, it, *args)

    monkeypatch.setattr(cls, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        cls(cfg).distill(tiny_train, 2, seed=1, run=RunDir(tmp_path / "b", checkpoint_every=2, progress=False))
    monkeypatch.setattr(cls, "step", original)
    resumed = cls(cfg).distill(tiny_train, 2, seed=1, run=RunDir(tmp_path / "b", resume=True, checkpoint_every=2,
                                                                progress=False))
    assert torch.allclose(full.images, resumed.images, atol=1e-6)


@pytest.mark.parametrize("name", ["dc", "dsa", "dm", "cafe", "cafe_dsa", "dd"])
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
@pytest.mark.parametrize("ipc", [1, 10, 50])
def test_published_presets_load(name, dataset, ipc):
    cfg = resolve_config(name, dataset, ipc)
    if name == "dd":  # the reference's count: 400 epochs of 1024-image batches, computed from the data
        assert cfg.iterations == 0 and cfg.epochs == 400 and cfg.decay_epochs == 40 and cfg.init == "xavier"
        assert cfg.model == ("alexcifarnet" if dataset.startswith("cifar") else "lenet")
        return
    assert cfg.iterations >= 1000
    if name in ("dc", "dsa"):
        assert (cfg.outer_loop, cfg.inner_loop) == {1: (1, 1), 10: (10, 50), 50: (50, 10)}[ipc]
    if name == "dm":
        assert cfg.lr_img == 1.0 and cfg.iterations == 20000


@pytest.mark.parametrize("name", ["dc", "dsa", "dm", "cafe", "cafe_dsa", "dd"])
def test_cpu_presets_exist_and_are_small(name):
    cfg = resolve_config(name, "mnist", 10, preset="cpu")
    paper = resolve_config(name, "mnist", 10)
    assert cfg.iterations < (paper.iterations or paper.epochs * 59)


def test_dc_rejects_ipc_without_reference_loops(tiny_train):
    from gendistill.utils.errors import ConfigError

    cfg = load_config(get_method("dc").config_cls, {"iterations": 1})
    with pytest.raises(ConfigError, match="outer_loop"):
        get_method("dc").cls(cfg).distill(tiny_train, 3)


@pytest.mark.parametrize("name", ["dm", "dc", "cafe"])
def test_bfloat16_real_side_stays_close(name, tiny_train):
    cfg = tiny_config(name)
    fp32 = get_method(name).cls(cfg).distill(tiny_train, 2, seed=0)
    amp = get_method(name).cls(dataclasses.replace(cfg, amp_real=True)).distill(tiny_train, 2, seed=0)
    assert amp.images.dtype == torch.float32
    assert torch.allclose(fp32.images, amp.images, atol=0.05) and not torch.equal(fp32.images, amp.images)
