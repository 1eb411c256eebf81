"""The ``idc_imagenet`` evaluation protocol (IDC's ImageNet-subset evaluation, as Minimax uses it)."""

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import class_pattern_images

from gendistill.data.datasets import IMAGENET_STATS, RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import get_protocol, ipc_epoch, resolve_protocol
from gendistill.evaluation.trainer import _Trainer
from gendistill.nn.augment import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    ImageNetAugment,
    color_jitter,
    lighting,
    random_resized_crop_boxes,
    resized_crop,
)
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import GendistillError


def _resolved(ipc: int, num_classes: int = 10, **overrides):
    return resolve_protocol(get_protocol("idc_imagenet", **overrides), "imagewoof", ipc=ipc, num_classes=num_classes)


def test_epochs_by_ipc_follow_idc_argument_py():
    assert [ipc_epoch(i) for i in (1, 10, 20, 50, 70, 100, 200, 500, 1000)] == \
        [3000, 2000, 1500, 1500, 1000, 1000, 1000, 500, 300]
    assert ipc_epoch(10, num_classes=100) == 1300 and ipc_epoch(1, num_classes=100) == 2000
    assert ipc_epoch(10, factor=2) == 1500  # multi-formation counts ipc * factor^2
    assert [_resolved(i).epochs for i in (1, 10, 20, 50, 100, 200)] == [3000, 2000, 1500, 1500, 1000, 1000]
    assert _resolved(10, epochs=7).epochs == 7  # an explicit epoch count is kept
    hundred = _resolved(10, num_classes=100)
    assert (hundred.epochs, hundred.lr, hundred.weight_decay, hundred.batch_size) == (1300, 0.1, 1e-4, 128)


def test_resolved_protocol_matches_reference_settings():
    p = _resolved(10)
    assert p.cutmix_prob == 1.0 and p.cutmix_beta == 1.0
    assert (p.lr, p.momentum, p.weight_decay, p.batch_size) == (0.01, 0.9, 5e-4, 64)
    assert p.schedule == "multistep" and p.milestones == pytest.approx((2 / 3, 5 / 6)) and p.gamma == 0.2
    assert (p.model, p.resize_crop, tuple(p.crop_scale), p.color_jitter, p.lighting) == \
        ("resnet_ap10", 224, (0.5, 1.0), 0.4, 0.1)
    assert p.dsa_strategy == "flip" and p.eval_count == 100 and not p.extra_pass


def test_random_resized_crop_size_and_full_box_is_plain_resize():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    boxes = random_resized_crop_boxes(6, 32, 32, g, scale=(0.5, 1.0))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 32**2
    assert (boxes >= 0).all() and (boxes[:, 2:] <= 32).all() and (area >= 0.45).all() and (area <= 1).all()
    assert resized_crop(x, boxes, 24).shape == (6, 3, 24, 24)
    full = random_resized_crop_boxes(6, 32, 32, g, scale=(1.0, 1.0))
    assert torch.equal(full, torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 6))
    plain = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(resized_crop(x, full, 48), plain, atol=1e-5)
    assert torch.allclose(ImageNetAugment(32, scale=(1.0, 1.0))(x, g), x, atol=1e-6)


def _reference_jitter(img: torch.Tensor, a: torch.Tensor, order: list[int]) -> torch.Tensor:
    """IDC's misc/utils.py ColorJitter for one image, ops in the given order (0 brightness, 1 contrast, 2 sat)."""
    for k in order:
        grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand_as(img)
        target = torch.zeros_like(img) if k == 0 else grey.mean().expand_as(img) if k == 1 else grey
        img = img.lerp(target, float(a[k]))
    return img


def test_jitter_and_lighting_match_reference_and_are_seeded():
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = color_jitter(x, 0.4, torch.Generator().manual_seed(7))
    assert torch.equal(out, color_jitter(x, 0.4, torch.Generator().manual_seed(7)))
    assert not torch.equal(out, color_jitter(x, 0.4, torch.Generator().manual_seed(8)))
    a = (torch.rand(5, 3, generator=torch.Generator().manual_seed(7)) * 2 - 1) * 0.4
    rng = random.Random(0)
    for i in range(5):
        order = rng.sample(range(3), 3)  # the reference shuffles; the ops commute
        assert torch.allclose(out[i], _reference_jitter(x[i], a[i], order), atol=1e-5)
    lit = lighting(x, 0.1, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(lit, lighting(x, 0.1, torch.Generator().manual_seed(3)))
    alpha = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)) * 0.1
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGVEC), torch.tensor(IMAGENET_PCA_EIGVAL)
    for i in range(5):
        rgb = (eigvec * alpha[i].view(1, 3) * eigval.view(1, 3)).sum(1)
        assert torch.allclose(lit[i], x[i] + rgb.view(3, 1, 1), atol=1e-6)


def test_colour_ops_need_rgb(tiny_train):
    proto = dataclasses.replace(get_protocol("idc_imagenet"), resize_crop=0)
    with pytest.raises(GendistillError, match="RGB"):
        _Trainer(proto, tiny_train.images(slice(0, 4)), tiny_train.labels[:4], 0.01, None, torch.device("cpu"))


def _rgb(split: str, per_class: int, seed: int) -> RealDataset:
    x, y = class_pattern_images(per_class, 10, 3, 32, seed)
    return RealDataset(torch.from_numpy(x), torch.from_numpy(y), [f"c{i}" for i in range(10)],
                       Preprocessing(*IMAGENET_STATS), "tinyrgb", split, flip_ok=True)


def test_best_and_final_accuracy_both_recorded():
    train, test = _rgb("train", 2, 0), _rgb("test", 2, 5)
    syn = SyntheticSet(train.images(slice(None)), train.labels, train.class_names, train.preprocessing,
                       meta={"method": "test", "dataset": "tinyrgb"})
    proto = get_protocol("idc_imagenet", model="convnet_w8", resize_crop=24, epochs=2, runs=2, batch_size=8)
    results = [evaluate(syn, test, dataclasses.replace(proto, ensemble=mode), seed=3, progress=False)
               for mode in ("sequential", "batched")]
    for res in results:
        assert res.protocol["name"] == "idc_imagenet" and res.protocol["eval_count"] == 100
        assert len(res.accs) == len(res.best_accs) == 2 and all(e in (1, 2) for e in res.best_epochs)
        assert all(b >= a for a, b in zip(res.accs, res.best_accs, strict=True))
        assert res.best_mean >= res.mean and "best on test" in res.summary()
        assert res.to_dict()["best_accs"] == res.best_accs
    assert results[0].accs == pytest.approx(results[1].accs, abs=1e-9)
    assert results[0].best_accs == pytest.approx(results[1].best_accs, abs=1e-9)
    plain = evaluate(syn, test, dataclasses.replace(proto, eval_count=0, runs=1), seed=3, progress=False)
    assert plain.best_mean is None and "best" not in plain.summary()
