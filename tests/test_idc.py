"""IDC (Kim et al., ICML 2022): multi-formation decoding, mix init, conv-only matching, lr scaling, the batched
per-class SGD, the decoded evaluation path and resume."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gendistill.baselines.idc import (
    IDCConfig,
    IDCDistiller,
    idc_distance,
    matched_parameters,
    mix_init,
    sequential_class_sgd,
    tune_lr_img,
)
from gendistill.data.preprocessing import Preprocessing
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import PROTOCOLS, resolve_protocol
from gendistill.evaluation.trainer import _lr_at
from gendistill.nn.augment import DrawSequence, IDCAugment
from gendistill.nn.nets import create_network
from gendistill.runs import RunDir
from gendistill.synset.decoders import decode, multiformation, normalised_grey
from gendistill.synset.format import SyntheticSet
from gendistill.utils.seeding import make_generator

PRE = Preprocessing((0.2,), (0.3,))
TINY = {"iterations": 2, "inner_loop": 2, "model": "convnet_w8", "batch_real": 4, "n_data": 8, "lr_img": 0.05}


def tiny_config(**kw) -> IDCConfig:
    return dataclasses.replace(IDCConfig(), **{**TINY, **kw})


# ------------------------------------------------------------------------------------------ decoding
def test_multiformation_shapes_crop_order_and_labels():
    x = torch.randn(3, 2, 16, 16)
    pre = Preprocessing((0.2, 0.4), (0.3, 0.5))
    labels = torch.tensor([0, 1, 2])
    out, y = decode(x, labels, {"name": "multiformation", "factor": 2}, pre)
    assert out.shape == (12, 2, 16, 16) and torch.equal(y, labels.repeat(4))
    # crop-major: rows k*N..(k+1)*N hold crop k = (i, j) of every image, bilinearly upsampled
    crop = x[:, :, 8:, :8]  # k = 2: i = 1, j = 0
    want = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out[6:9], want)
    assert decode(x, labels, None, pre)[0] is x  # no decoder: unchanged
    mnist = multiformation(torch.randn(2, 1, 28, 28), 2, torch.zeros(1))  # 28 / 2 = 14: no padding
    assert mnist.shape == (8, 1, 28, 28)


def test_padding_is_normalised_grey_and_matches_pixel_space_decoding():
    pixels = torch.rand(2, 1, 5, 5)
    # the reference: pad with 0.5 in pixel space, crop, upsample, then normalise
    padded = F.pad(pixels, (0, 1, 0, 1), value=0.5)
    crops = torch.cat([padded[:, :, i * 3 : i * 3 + 3, j * 3 : j * 3 + 3] for i in range(2) for j in range(2)])
    reference = PRE.apply(F.interpolate(crops, size=(5, 5), mode="bilinear", align_corners=False))
    ours = multiformation(PRE.apply(pixels), 2, normalised_grey(PRE))
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(normalised_grey(PRE), torch.tensor([(0.5 - 0.2) / 0.3]))


def test_decoded_set_survives_save_and_load(tmp_path):
    syn = SyntheticSet(torch.randn(4, 1, 16, 16), torch.tensor([0, 0, 1, 1]), ["a", "b"], PRE,
                       meta={"decoder": {"name": "multiformation", "factor": 2}})
    back = SyntheticSet.load(syn.save(tmp_path / "s"))
    x, y = back.materialize()
    assert len(back) == 4 and x.shape[0] == 16 and torch.equal(torch.bincount(y), torch.tensor([8, 8]))


# ------------------------------------------------------------------------------------------ init
def test_mix_init_is_a_mosaic_of_nearest_downsampled_real_images():
    real = torch.arange(4 * 16 * 16, dtype=torch.float32).view(1, 4, 1, 1, 16, 16)  # 1 class, f^2 = 4, ipc 1
    mosaic = mix_init(real, 2)[0, 0]
    assert mosaic.shape == (16, 16)
    # tile k = i*2 + j holds image k shrunk 16 -> 8 by nearest interpolation: out[a, b] = in[2a, 2b]
    assert mosaic[0, 0] == real[0, 0, 0, 0, 0, 0]
    assert mosaic[8 + 3, 8 + 5] == real[0, 3, 0, 0, 6, 10]
    assert mosaic[2, 8 + 1] == real[0, 1, 0, 0, 4, 2]
    odd = mix_init(torch.randn(2, 4, 3, 1, 5, 5), 2)  # 5 = 3 + 2: first row/column of tiles one pixel larger
    assert odd.shape == (6, 1, 5, 5)


def test_init_state_builds_mosaics_of_the_class(tiny_train):
    d = IDCDistiller(tiny_config())
    g = make_generator(3)
    state = d.init_state(tiny_train, 2, g, 3)
    idx = tiny_train.sample_indices(8, make_generator(3))
    real = tiny_train.images(idx.reshape(-1)).view(10, 4, 2, 1, 16, 16)
    assert torch.equal(state["images"], mix_init(real, 2))
    assert torch.equal(tiny_train.labels[idx[4]], torch.full((8,), 4))  # class 4's tiles come from class 4
    assert torch.equal(state["momentum"], torch.zeros_like(state["images"]))
    with pytest.raises(Exception, match="needs 28 real"):
        d.init_state(tiny_train, 7, g, 0)


# ------------------------------------------------------------------------------------------ matching
def test_only_convolution_weights_are_matched():
    net = create_network("convnet_w8", 1, 10, 16, seed=0)
    names = set(matched_parameters(net))
    convs = {n for n, p in net.named_parameters() if p.dim() == 4}
    assert names == convs and len(convs) == 3
    with_bias = set(matched_parameters(net, bias=True))
    assert any(net.get_parameter(n).dim() == 1 for n in with_bias)
    assert any(net.get_parameter(n).dim() == 2 for n in matched_parameters(net, fc=True))


def test_distances_l1_mse_cos():
    gs = {"w": torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]])}  # [classes 2, out 1, 2]
    gr = {"w": torch.zeros(2, 1, 2)}
    assert idc_distance(gs, gr, "mse", batch_dims=1).item() == pytest.approx(1 + 4 + 9 + 1)
    assert idc_distance(gs, gr, "l1", batch_dims=1).item() == pytest.approx(1 + 2 + 3 + 1)
    assert idc_distance(gs, gs, "cos", batch_dims=1).item() == pytest.approx(0, abs=1e-5)
    assert idc_distance(gs, {"w": -gs["w"]}, "cos", batch_dims=1).item() == pytest.approx(4, abs=1e-5)


def test_lr_img_scaling_follows_tune_lr_img():
    assert tune_lr_img(1e-4, 10, "mnist", 28) == pytest.approx(1e-4)
    assert tune_lr_img(1e-4, 50, "mnist", 28) == pytest.approx(5e-4)
    assert tune_lr_img(1e-4, 10, "fashion_mnist", 28) == pytest.approx(1e-4 * (28 / 32) ** 2)  # as the reference
    assert tune_lr_img(5e-3, 1, "cifar10", 32) == pytest.approx(5e-4)
    d = IDCDistiller(tiny_config(lr_img=1e-2))
    assert IDCDistiller(tiny_config(lr_img=1e-2, scale_lr_img=False)).lr_img(_Fake(), 5) == 1e-2
    assert d.lr_img(_Fake(), 5) == pytest.approx(1e-2 * 0.5 * (16 / 32) ** 2)


class _Fake:
    name, image_shape = "tiny", (1, 16, 16)


def test_batched_class_steps_equal_the_reference_per_class_sgd_in_pixel_space():
    """The reference steps pixels p with one SGD (momentum 0.5) per class; ours steps x = (p - mean) / std for all
    classes at once with lr / std^2. The trajectories must agree (after normalisation)."""
    torch.manual_seed(0)
    c, ipc, mean, std, lr, m = 3, 2, 0.2, 0.3, 0.05, 0.5
    targets = torch.randn(c * ipc, 1, 2, 2)

    def class_loss(x_norm, k):  # a non-quadratic per-class loss of the normalised images
        sl = slice(k * ipc, (k + 1) * ipc)
        return ((x_norm[sl] - targets[sl]) ** 4).sum() + (x_norm[sl] * targets[sl]).sin().sum()

    pixels = torch.rand(c * ipc, 1, 2, 2, requires_grad=True)
    x = ((pixels.detach() - mean) / std).clone()
    buf = torch.zeros_like(x)
    opt = torch.optim.SGD([pixels], lr=lr, momentum=m)

    def grad_fn(x_eval):
        leaf = x_eval.clone().requires_grad_(True)
        loss = sum(class_loss(leaf, k) for k in range(c))
        return torch.autograd.grad(loss, [leaf])[0], loss.detach()

    for _ in range(3):
        for k in range(c):
            opt.zero_grad()
            class_loss((pixels - mean) / std, k).backward()
            opt.step()
        x, buf, _ = sequential_class_sgd(x, buf, c, lr / std**2, m, grad_fn)
    assert torch.allclose(x, (pixels.detach() - mean) / std, atol=1e-5)


def test_matching_gradient_reaches_only_own_class_rows(tiny_train):
    d = IDCDistiller(tiny_config(class_chunk=3))
    g = make_generator(0)
    state = d.init_state(tiny_train, 2, g, 0)
    net = d.fresh_network(tiny_train, 0, 0)
    params = matched_parameters(net)
    aug = IDCAugment("color_crop_cutout")
    grey = normalised_grey(tiny_train.preprocessing)
    grad, loss = d._matching_grad(state["images"], net=net, params=params, train=tiny_train, ipc=2,
                                  generator=make_generator(1), aug=aug, grey=grey)
    assert grad.shape == state["images"].shape and torch.isfinite(grad).all() and loss > 0
    # the chunking of the backward passes changes nothing
    d_all = IDCDistiller(tiny_config(class_chunk=0))
    grad_all, loss_all = d_all._matching_grad(state["images"], net=net, params=params, train=tiny_train, ipc=2,
                                              generator=make_generator(1), aug=aug, grey=grey)
    assert torch.allclose(grad, grad_all, atol=1e-6) and torch.allclose(loss, loss_all)


def test_idc_augment_composition():
    aug = IDCAugment("color_crop_cutout_flip_scale_rotate")
    draw = aug.draw(4, 16, make_generator(0))
    assert isinstance(draw, DrawSequence)
    families = [d.family for d in draw.draws]
    assert families[:2] == ["flip", "color"] and families[2] in ("crop", "scale", "rotate")
    assert families[3] == "cutout"
    x = torch.randn(2, 1, 16, 16)
    siamese = aug.draw_siamese(2, 16, make_generator(1))
    out = aug.apply(torch.cat([x, x]), siamese, torch.tensor([0, 1, 0, 1]))
    assert torch.equal(out[:2], out[2:])  # same group, same parameters
    assert IDCAugment.for_dataset(False, "color_crop_flip_scale_rotate").strategy == "color_crop_scale_rotate"


# ------------------------------------------------------------------------------------------ evaluation
def test_idc_protocol_per_dataset_rule():
    idc = PROTOCOLS["idc"]
    assert idc.aug_mode == "idc" and idc.cutmix_prob == 0.5 and "cutout" not in idc.dsa_strategy
    # train.py: 1000 epochs, MultiStepLR milestones [2*1000//3, 5*1000//6] = [666, 833], gamma 0.2
    assert not idc.extra_pass and idc.batch_size == 64
    lrs = [_lr_at(idc, 0.01, 1000, e) for e in (665, 666, 832, 833)]
    assert lrs == pytest.approx([0.01, 0.002, 0.002, 0.0004])
    assert resolve_protocol(idc, "mnist", factor=2).cutmix_prob == 0.0
    assert resolve_protocol(idc, "mnist", factor=1).cutmix_prob == 0.5
    assert resolve_protocol(idc, "fashion_mnist", factor=2).cutmix_prob == 0.5
    svhn = resolve_protocol(idc, "svhn", factor=1, ipc=1)
    assert svhn.cutmix_prob == 0.0 and svhn.dsa_strategy == "color_crop_cutout_scale_rotate"
    assert resolve_protocol(PROTOCOLS["dsa"], "mnist", factor=2) == PROTOCOLS["dsa"]


def test_evaluation_trains_on_the_decoded_images(tiny_train, tiny_test):
    syn = IDCDistiller(tiny_config(iterations=1, inner_loop=1)).distill(tiny_train, 1, seed=0, progress=False)
    assert len(syn) == 10 and syn.meta["decoder"] == {"name": "multiformation", "factor": 2}
    for protocol in ("idc", "dsa"):
        res = evaluate(syn, tiny_test, protocol, model="convnet_w8", runs=1, epochs=1, progress=False)
        assert res.synset["num_images"] == 10 and res.synset["num_train_images"] == 40
    assert res.protocol["name"] == "dsa"
    res = evaluate(syn, tiny_test, None, model="convnet_w8", runs=1, epochs=1, progress=False)
    assert res.protocol["name"] == "idc" and res.protocol["aug_mode"] == "idc"
    idc1 = IDCDistiller(tiny_config(iterations=1, inner_loop=1, factor=1)).distill(tiny_train, 1, progress=False)
    assert "decoder" not in idc1.meta and idc1.materialize()[0].shape[0] == 10


# ------------------------------------------------------------------------------------------ resume
def test_resume_gives_the_same_set(tmp_path, tiny_train, monkeypatch):
    cfg = tiny_config(iterations=3, inner_loop=1)
    full = IDCDistiller(cfg).distill(tiny_train, 1, seed=2, run=RunDir(tmp_path / "a", checkpoint_every=1),
                                     progress=False)
    step = IDCDistiller.step

    def failing(self, it, *args):
        if it == 2:
            raise KeyboardInterrupt
        return step(self, it, *args)

    monkeypatch.setattr(IDCDistiller, "step", failing)
    with pytest.raises(KeyboardInterrupt):
        IDCDistiller(cfg).distill(tiny_train, 1, seed=2, run=RunDir(tmp_path / "b", checkpoint_every=1),
                                  progress=False)
    monkeypatch.setattr(IDCDistiller, "step", step)
    resumed = IDCDistiller(cfg).distill(tiny_train, 1, seed=2, progress=False,
                                        run=RunDir(tmp_path / "b", resume=True, checkpoint_every=1))
    assert torch.equal(full.images, resumed.images)


def test_imagefolder_export_writes_the_decoded_training_images(tmp_path):
    """Downstream ImageFolder pipelines get what a network trains on; --raw keeps the mosaics and their decoder."""
    pixels = torch.rand(4, 1, 16, 16)
    syn = SyntheticSet(PRE.apply(pixels), torch.tensor([0, 0, 1, 1]), ["a", "b"], PRE,
                       meta={"decoder": {"name": "multiformation", "factor": 2}})
    decoded = SyntheticSet.from_imagefolder(syn.to_imagefolder(tmp_path / "d"))
    x, y = syn.materialize()
    order = torch.argsort(y, stable=True)  # the folder holds the images class by class
    x, y = x[order], y[order]
    assert len(decoded) == 16 and "decoder" not in decoded.meta and decoded.meta["decoded_from"]["stored_images"] == 4
    assert torch.equal(decoded.labels, y) and torch.allclose(decoded.to_pixels(), PRE.invert(x).clamp(0, 1),
                                                             atol=0.5 / 255 + 1e-6)
    raw = SyntheticSet.from_imagefolder(syn.to_imagefolder(tmp_path / "r", decoded=False))
    assert len(raw) == 4 and raw.meta["decoder"] == syn.meta["decoder"] and raw.materialize()[0].shape[0] == 16
