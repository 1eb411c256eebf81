"""KIP: infinite-width kernels against finite wide networks, kernel ridge regression, Label Solve, the loss
gradient, distillation, the ``krr`` evaluator and the KIP ``.npz`` importer."""

import numpy as np
import pytest
import torch

from gendistill.baselines.kip.kernels import (
    conv_kernel,
    conv_network,
    empirical_ntk,
    fc_kernel,
    fc_network,
    kip_loss,
    krr_predict,
    label_solve,
)
from gendistill.synset.interop import import_kip_npz


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _readout_only(f, params, keys):
    """The network as a function of its readout parameters only: its eNTK is the empirical NNGP."""
    return (lambda p, x: f({**params, **p}, x)), {k: params[k] for k in keys}


def _errors(make, x, ref_ntk, ref_nngp, widths, readout, seeds=(0, 1)):
    out = []
    for width in widths:
        e_ntk, e_nngp = [], []
        for seed in seeds:
            f, params = make(width, torch.Generator().manual_seed(seed))
            e_ntk.append(_rel(empirical_ntk(f, params, x), ref_ntk))
            g, sub = _readout_only(f, params, readout)
            e_nngp.append(_rel(empirical_ntk(g, sub, x), ref_nngp))
        out.append((float(np.mean(e_ntk)), float(np.mean(e_nngp))))
    return out


@pytest.mark.parametrize("depth", [1, 2])
def test_fc_kernel_is_the_wide_network_limit(depth):
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ntk, nngp = fc_kernel(x, depth=depth), fc_kernel(x, depth=depth, get="nngp")
    assert torch.allclose(ntk, ntk.T) and torch.allclose(fc_kernel(x, x.clone(), depth=depth), ntk)
    (n64, g64), (n1k, g1k) = _errors(lambda w, gen: fc_network(12, w, depth, generator=gen), x, ntk, nngp,
                                     (64, 1024), [f"w{depth}", f"b{depth}"])
    assert n1k < 0.5 * n64 and n1k < 0.1, (n64, n1k)
    assert g1k < 0.5 * g64 and g1k < 0.1, (g64, g1k)


@pytest.mark.parametrize(("depth", "pre_conv", "size"), [(3, False, 8), (1, True, 6)])
def test_conv_kernel_is_the_wide_network_limit(depth, pre_conv, size):
    x = torch.randn(3, 2, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ntk = conv_kernel(x, depth=depth, pre_conv=pre_conv)
    nngp = conv_kernel(x, depth=depth, pre_conv=pre_conv, get="nngp")
    (n32, g32), (n512, g512) = _errors(
        lambda w, gen: conv_network(2, w, depth, size, pre_conv=pre_conv, generator=gen), x, ntk, nngp, (32, 512),
        ["w_out", "b_out"])
    assert n512 < 0.5 * n32 and n512 < 0.12, (n32, n512)
    assert g512 < 0.5 * g32 and g512 < 0.12, (g32, g512)


def test_conv_kernel_chunking_and_symmetry():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    whole = conv_kernel(a, b, memory_mb=64)
    chunked = conv_kernel(a, b, memory_mb=0)  # one image pair per chunk
    assert torch.allclose(whole, chunked, rtol=1e-12, atol=1e-12)
    sym = conv_kernel(a)
    assert torch.allclose(sym, sym.T) and torch.allclose(sym, conv_kernel(a, a.clone()))
    assert (torch.linalg.eigvalsh(sym) > 0).all()


def _reference_conv_kernel(x1, x2, depth, pre_conv, get, w_var=2.0, b_var=0.01):
    """Straightforward dense recursion (reference details section 5) over all pixel pairs ``[i, j]``, one image
    pair at a time: conv as the mean of 9 shifted copies, ReLU arc-cosine formulas, pooling by reshape-mean."""
    import math

    import torch.nn.functional as F

    ops = (["conv", "relu"] if pre_conv else []) + ["conv", "relu", "pool"] * depth

    def conv(k):
        h, w = k.shape[:2]
        p = F.pad(k, (1, 1, 1, 1, 1, 1, 1, 1))
        return sum(p[1 + u : 1 + u + h, 1 + v : 1 + v + w, 1 + u : 1 + u + h, 1 + v : 1 + v + w]
                   for u in (-1, 0, 1) for v in (-1, 0, 1)) / 9

    def pool(k):
        h, w = k.shape[0] // 2, k.shape[1] // 2
        return k[: 2 * h, : 2 * w, : 2 * h, : 2 * w].reshape(h, 2, w, 2, h, 2, w, 2).mean(dim=(1, 3, 5, 7))

    def diag(k):
        h, w = k.shape[:2]
        return k.reshape(h * w, h * w).diagonal().reshape(h, w)

    out = torch.zeros(len(x1), len(x2), dtype=torch.float64)
    for a, xa in enumerate(x1.double()):
        for b, xb in enumerate(x2.double()):
            pairs = {"aa": (xa, xa), "bb": (xb, xb), "ab": (xa, xb)}
            ks = {n: torch.einsum("chw,cuv->hwuv", u, v) / u.shape[0] for n, (u, v) in pairs.items()}
            ts = dict.fromkeys(ks)
            for op in ops:
                if op == "conv":
                    for n in ks:
                        s = w_var * conv(ks[n]) + b_var
                        ts[n] = s if ts[n] is None else s + w_var * conv(ts[n])
                        ks[n] = s
                elif op == "relu":
                    qa, qb = diag(ks["aa"]), diag(ks["bb"])
                    for n, (q1, q2) in {"aa": (qa, qa), "bb": (qb, qb), "ab": (qa, qb)}.items():
                        norm = torch.sqrt(q1[:, :, None, None] * q2[None, None])
                        c = (ks[n] / norm).clamp(-1, 1)
                        theta = torch.arccos(c)
                        ks[n] = norm * (torch.sqrt(1 - c * c) + (math.pi - theta) * c) / (2 * math.pi)
                        ts[n] = ts[n] * (math.pi - theta) / (2 * math.pi)
                else:
                    ks, ts = {n: pool(k) for n, k in ks.items()}, {n: pool(t) for n, t in ts.items()}
            s = w_var * diag(ks["ab"]).mean() + b_var
            out[a, b] = s + w_var * diag(ts["ab"]).mean() if get == "ntk" else s
    return out


@pytest.mark.parametrize(("depth", "pre_conv", "shape"), [(3, False, (1, 8, 8)), (2, False, (3, 7, 7)),
                                                          (1, True, (2, 6, 6)), (2, True, (1, 9, 12))])
def test_banded_conv_kernel_equals_the_dense_recursion(depth, pre_conv, shape):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    b = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    for get in ("ntk", "nngp"):
        ref = _reference_conv_kernel(a, b, depth, pre_conv, get)
        for memory_mb in (1024, 0):  # one chunk; one image pair per chunk
            got = conv_kernel(a, b, depth=depth, pre_conv=pre_conv, get=get, memory_mb=memory_mb)
            assert got.dtype == torch.float64
            assert torch.allclose(got, ref, rtol=1e-10, atol=0), float(((got - ref) / ref).abs().max())
        ref_self = _reference_conv_kernel(a, a, depth, pre_conv, get)  # identical images: c = 1 on the diagonal
        assert torch.allclose(conv_kernel(a, depth=depth, pre_conv=pre_conv, get=get), ref_self, rtol=1e-10, atol=0)
    f32 = conv_kernel(a, b, depth=depth, pre_conv=pre_conv, dtype=torch.float32)
    assert torch.allclose(f32, _reference_conv_kernel(a, b, depth, pre_conv, "ntk"), rtol=1e-4, atol=0)


@pytest.mark.parametrize(("depth", "pre_conv", "size"), [(3, False, 8), (1, True, 7)])
def test_banded_conv_kernel_gradient_is_the_dense_derivative(depth, pre_conv, size):
    g = torch.Generator().manual_seed(8)
    a, b = (torch.randn(2, 2, size, size, generator=g, dtype=torch.float64) for _ in range(2))
    w, v = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(a.shape, generator=g, dtype=torch.float64)
    x = a.clone().requires_grad_()
    (conv_kernel(x, b, depth=depth, pre_conv=pre_conv, memory_mb=0) * w).sum().backward()
    eps = 1e-4  # central difference of the dense reference along v
    numeric = ((_reference_conv_kernel(a + eps * v, b, depth, pre_conv, "ntk")
                - _reference_conv_kernel(a - eps * v, b, depth, pre_conv, "ntk")) * w).sum() / (2 * eps)
    assert float((x.grad * v).sum()) == pytest.approx(float(numeric), rel=1e-6)


def test_banded_conv_kernel_tiles_do_not_change_the_result(monkeypatch):
    import gendistill.baselines.kip.kernels as kernels

    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 1, 8, 8, generator=g,
                                                                                  dtype=torch.float64)
    whole = conv_kernel(a, b)
    monkeypatch.setattr(kernels, "_TILE_BYTES", 1)  # one image pair per tile at every stage
    assert torch.allclose(conv_kernel(a, b), whole, rtol=1e-13, atol=0)


def test_krr_on_hand_made_kernels():
    # lambda = reg * trace / n = 1 * 4 / 2 = 2, so the weights are y / (2 + 2)
    k_ss = torch.diag(torch.tensor([2.0, 2.0]))
    y_s = torch.tensor([[1.0, -1.0], [3.0, 0.0]])
    k_ts = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(krr_predict(k_ts, k_ss, y_s, 1.0).float(), k_ts @ y_s / 4)
    # lambda -> 0 interpolates the support: predictions at the support points are its labels
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64)
    k = fc_kernel(x)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(krr_predict(k, k, y, 1e-12), y, atol=1e-7)
    loss, acc = kip_loss(k, k, y, y, 1e-12)
    assert float(loss) < 1e-12 and float(acc) == 1.0


def test_label_solve_recovers_the_labels_that_explain_the_targets():
    g = torch.Generator().manual_seed(2)
    xs, xt = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(30, 8, generator=g, dtype=torch.float64)
    k_ss, k_ts = fc_kernel(xs), fc_kernel(xt, xs)
    y_true = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y_t = krr_predict(k_ts, k_ss, y_true, 1e-6)
    assert torch.allclose(label_solve(k_ts, k_ss, y_t, 1e-6), y_true, atol=1e-6)
    noisy = y_t + 0.1 * torch.randn(y_t.shape, generator=g, dtype=torch.float64)
    solved = label_solve(k_ts, k_ss, noisy, 1e-6)
    assert kip_loss(k_ts, k_ss, solved, noisy, 1e-6)[0] <= kip_loss(k_ts, k_ss, y_true, noisy, 1e-6)[0]


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_kip_loss_gradient_matches_finite_differences(arch):
    g = torch.Generator().manual_seed(4)
    if arch == "fc":
        xs, xt = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g,
                                                                                  dtype=torch.float64)

        def kern(a, b=None):
            return fc_kernel(a, b, depth=2)
    else:
        xs, xt = (torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64) for n in (2, 3))

        def kern(a, b=None):
            return conv_kernel(a, b, depth=1, memory_mb=0)  # chunked: exercises the checkpointed backward
    ys = torch.randn(xs.shape[0], 2, generator=g, dtype=torch.float64)
    yt = torch.randn(xt.shape[0], 2, generator=g, dtype=torch.float64)

    def loss(x, y):
        k = kern(torch.cat([x, xt]), x)  # K_ss includes each support image paired with itself (c = 1)
        return kip_loss(k[x.shape[0]:], k[: x.shape[0]], y, yt, 1e-3)[0]

    # eps 1e-4: near c = 1 (self pairs) arccos amplifies rounding to ~1e-8, too noisy for the default 1e-6 steps
    assert torch.autograd.gradcheck(loss, (xs.clone().requires_grad_(), ys.clone().requires_grad_()), eps=1e-4,
                                    atol=2e-5, rtol=1e-3)


def test_kip_distills_lowers_its_loss_and_learns_labels(tiny_train):
    from gendistill.registry import get_method

    info = get_method("kip")
    cfg = info.config_cls(iterations=25, batch_real=6, learn_labels=True, lr_img=0.04)
    method = info.cls(cfg)
    gen = torch.Generator().manual_seed(0)
    state = method.init_state(tiny_train, 2, gen, 0)
    assert torch.allclose(state["labels"].sum(1), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    losses = [float(method.step(i, state, tiny_train, torch.Generator().manual_seed(99), 0)["loss"])
              for i in range(25)]
    assert losses[-1] < 0.8 * losses[0]  # same target batch every step: the loss must fall
    syn = method.finalize(state, tiny_train, 2, 0)
    assert syn.soft and syn.labels.shape == (20, 10) and syn.meta["kip_label_space"] == "centred"
    assert torch.equal(torch.bincount(syn.hard_labels(), minlength=10), torch.full((10,), 2))
    assert syn.meta["kip_kernel"]["arch"] == "fc" and syn.meta["kip_kernel"]["depth"] == 1


def test_krr_evaluator_is_kernel_regression_on_the_test_split(tiny_train, tiny_test):
    from gendistill.baselines.kip.method import centred_one_hot
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.registry import get_method

    info = get_method("kip")
    syn = info.cls(info.config_cls(iterations=3, batch_real=4)).distill(tiny_train, 2, seed=0, progress=False)
    result = evaluate(syn, tiny_test, progress=False)  # the method's own protocol
    assert result.protocol["name"] == "krr" and result.protocol_source.startswith("default")
    x_s = syn.images.double()
    pred = krr_predict(fc_kernel(tiny_test.images(), x_s), fc_kernel(x_s), centred_one_hot(syn.labels, 10), 1e-6)
    expected = 100.0 * float((pred.argmax(1) == tiny_test.labels).double().mean())
    assert result.mean == pytest.approx(expected) and result.accs == [result.mean]
    assert result.protocol["kernel"]["arch"] == "fc" and result.protocol["label_loss"] == "mse"
    conv = evaluate(syn.subset(1), tiny_test, "krr", model="conv:2", progress=False, test_subset=10)
    assert conv.protocol["kernel"] == {"arch": "conv", "depth": 2, "pre_conv": False, "w_var": 2.0, "b_var": 0.01,
                                       "get": "ntk"}
    assert conv.reduced and "test subset 10" in conv.reduced_note


def _kip_file(path, images_nchw, labels):
    np.savez(path, images=images_nchw.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())


def test_kip_npz_import_maps_kip_standardisation_to_the_dataset_space(tmp_path, tiny_train):

    px = tiny_train.pixels.double() / 255
    mean, std = px.mean(), px.std(unbiased=False)  # KIP: per-channel mean / population std of the train split
    idx = torch.arange(0, 120, 6)
    kip_space = (px[idx] - mean) / std
    hard = tiny_train.labels[idx]
    spec = (tiny_train.class_names, tiny_train.preprocessing)
    _kip_file(tmp_path / "kip_tiny_ConvNet3_ssize20_nozca_nol_noaug_ckpt1000.npz", kip_space,
              torch.nn.functional.one_hot(hard, 10).double() - 0.1)
    syn = import_kip_npz(tmp_path / "kip_tiny_ConvNet3_ssize20_nozca_nol_noaug_ckpt1000.npz", spec,
                                    train_pixels=tiny_train.pixels)
    assert torch.allclose(syn.images, tiny_train.images(idx), atol=1e-5)
    assert torch.equal(syn.labels, hard) and not syn.soft
    assert syn.meta["kip_kernel"]["arch"] == "conv" and syn.meta["kip_file"]["ckpt"] == 1000
    learned = torch.nn.functional.one_hot(hard, 10).double() * 0.7 - 0.05
    learned[0, 3] += 0.2
    np.savez(tmp_path / "ConvNet_ssize20_nozca_l_aug_ckpt5.npz", support_images=kip_space.numpy(),
             support_labels=learned.numpy())  # NCHW and the support_* keys are accepted too
    soft = import_kip_npz(tmp_path / "ConvNet_ssize20_nozca_l_aug_ckpt5.npz", spec)
    assert soft.soft and torch.allclose(soft.labels.double(), learned, atol=1e-6)
    assert soft.meta["kip_kernel"]["pre_conv"] is True
    assert torch.allclose(soft.images.double(), kip_space, atol=1e-6)  # no train pixels: taken as they are


def test_kip_npz_import_errors(tmp_path, tiny_train):
    from gendistill.utils.errors import SynsetFormatError

    spec = (tiny_train.class_names, tiny_train.preprocessing)
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 16, 16, 1)))
    with pytest.raises(SynsetFormatError, match="keys 'images' and 'labels'"):
        import_kip_npz(tmp_path / "bad.npz", spec)
    _kip_file(tmp_path / "ConvNet3_ssize10_zca_nol.npz", torch.zeros(10, 1, 16, 16), torch.eye(10))
    with pytest.raises(SynsetFormatError, match="--zca kip"):
        import_kip_npz(tmp_path / "ConvNet3_ssize10_zca_nol.npz", spec)


def test_cli_imports_a_kip_npz(tmp_path, data_env, capsys):
    from test_cli import run_ok

    from gendistill.data.datasets import load_dataset
    from gendistill.synset.format import SyntheticSet

    train = load_dataset("mnist").train
    px = train.pixels[:10].double() / 255
    _kip_file(tmp_path / "kip_mnist_ConvNet3_ssize10_nozca_nol_noaug_ckpt1000.npz", (px - 0.13) / 0.31,
              torch.eye(10) - 0.1)
    out = run_ok(["import", "--format", "kip_npz", "--path",
                  str(tmp_path / "kip_mnist_ConvNet3_ssize10_nozca_nol_noaug_ckpt1000.npz"), "--dataset", "mnist",
                  "--out", str(tmp_path / "imported")], capsys)
    assert "10 images" in out
    syn = SyntheticSet.load(tmp_path / "imported")
    assert syn.meta["method"] == "kip" and syn.meta["dataset"] == "mnist" and torch.equal(syn.labels,
                                                                                          torch.arange(10))


def test_bench_kip_tiny_times_both_kernels_and_a_step(tmp_path, data_env, monkeypatch):
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_kip

    out = tmp_path / "bench"
    assert bench_kip.main(["--tiny", "--out", str(out), "--step", "fc,conv"]) == 0
    report = json.loads((out / "kip_cpu.json").read_text())
    assert [r["kernel"] for r in report["rows"]] == ["fc", "conv"]
    assert all(r["k_ts_s"] > 0 and r["step_s"] > 0 and r["targets"] == 8 for r in report["rows"])
    assert "| conv | 4 | 8 |" in (out / "kip_cpu.md").read_text()


def test_kip_learned_labels_train_networks_with_mse_not_a_softmax_of_them(monkeypatch):
    """KIP "+l" labels are regression targets near one-hot - 1/C: with 100 classes a softmax of them gives the true
    class 0.027 (nearly uniform). Network protocols train on them with MSE, as the KIP papers do."""
    from conftest import class_pattern_images

    from gendistill.data.datasets import RealDataset
    from gendistill.data.preprocessing import Preprocessing
    from gendistill.evaluation import trainer
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.synset.format import SyntheticSet

    c = 100
    x, y = class_pattern_images(1, c, 1, 16, seed=4)
    targets = torch.nn.functional.one_hot(torch.from_numpy(y), c).float() - 1.0 / c
    syn = SyntheticSet(torch.from_numpy(x).float() / 255, targets, [f"c{i}" for i in range(c)],
                       Preprocessing((0.0,), (1.0,)), meta={"method": "kip", "kip_label_space": "centred"})
    xt, yt = class_pattern_images(1, c, 1, 16, seed=5)
    test = RealDataset(torch.from_numpy(xt), torch.from_numpy(yt), [f"c{i}" for i in range(c)],
                       Preprocessing((0.0,), (1.0,)), "tiny100", "test")
    seen = {}
    real_loss = trainer._loss

    def spy(out, target, kind, temperature):
        seen.setdefault("kind", kind)
        seen.setdefault("target", target.detach().clone())
        return real_loss(out, target, kind, temperature)

    monkeypatch.setattr(trainer, "_loss", spy)
    result = evaluate(syn, test, "dsa", model="convnet_w8", runs=1, epochs=1, progress=False)
    assert result.protocol["label_loss"] == "mse" and seen["kind"] == "mse"
    true_class = seen["target"].max(1).values
    assert torch.allclose(true_class, torch.full_like(true_class, 1 - 1 / c))  # the targets as stored, no softmax
    assert float(torch.softmax(targets[0], 0).max()) < 0.03  # what the old evaluation trained on
