"""CPU cache blocking and the fast 2x2 pooling change the summation order only: results equal the whole batch's."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_registry import tiny_config

from gendistill.baselines.cafe import real_class_means
from gendistill.baselines.matching import per_class_gradients
from gendistill.evaluation.protocols import EvalProtocol
from gendistill.evaluation.trainer import train_network
from gendistill.nn.blocking import (
    block_rows,
    blocked_mean_backward,
    blocked_mean_grads,
    forward_in_blocks,
    row_blocks,
    uses_batch_statistics,
)
from gendistill.nn.nets import AvgPool2x2, create_network
from gendistill.registry import get_method
from gendistill.utils.seeding import make_generator


@pytest.fixture
def small_blocks(monkeypatch):
    """A block budget of 40 KiB: 5 rows for a width-8 ConvNet on 16x16 images."""
    monkeypatch.setenv("GENDISTILL_CPU_BLOCK_MB", str(40 / 1024))


def test_block_rows_policy(monkeypatch):
    x = torch.zeros(256, 1, 28, 28)
    convnet = create_network("convnet", 1, 10, 28, seed=0)
    assert block_rows(convnet, x) == 20  # 8 MiB / (128 channels x 28 x 28 x 4 bytes)
    assert block_rows(convnet, x[:10]) is None  # one block holds the whole batch
    bn = create_network("convnet_bn", 1, 10, 28, seed=0)
    assert uses_batch_statistics(bn.train()) and block_rows(bn, x) is None
    assert block_rows(bn.eval(), x) == 20  # running statistics: rows are independent again
    assert block_rows(create_network("mlp", 1, 10, 28, seed=0), x) is None
    monkeypatch.setenv("GENDISTILL_CPU_BLOCK_MB", "2")
    assert block_rows(convnet, x) == 5
    assert [(s.start, s.stop) for s in row_blocks(12, 5)] == [(0, 5), (5, 10), (10, 12)]
    assert [(s.start, s.stop) for s in row_blocks(12, None)] == [(0, 12)]


def test_blocked_forward_backward_and_grads_equal_the_whole_batch(small_blocks):
    net = create_network("convnet_w8", 1, 10, 16, seed=0)
    gen = make_generator(0)
    x = torch.randn(23, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (23,), generator=gen)
    rows = block_rows(net, x)
    assert rows == 5
    with torch.no_grad():
        torch.testing.assert_close(forward_in_blocks(net.embed, x, rows), net.embed(x))

    net.zero_grad()
    whole_loss = F.cross_entropy(net(x), y)
    whole_loss.backward()
    whole = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    loss = blocked_mean_backward(F.cross_entropy, net, x, y, rows=rows)
    torch.testing.assert_close(loss, whole_loss.detach())
    for a, b in zip(whole, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)

    params = list(net.parameters())
    grads = blocked_mean_grads(F.cross_entropy, net, x, params, y, rows=rows)
    for a, b in zip(whole, grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_fast_average_pool_matches_native_with_double_backward():
    pool = AvgPool2x2()
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))
    odd = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(pool(odd), F.avg_pool2d(odd, 2))  # odd sizes take the native path


def test_fast_average_pool_of_bfloat16_maps_sums_in_float32():
    pool = AvgPool2x2()
    x = torch.randn(2, 3, 6, 8).bfloat16().requires_grad_()
    out = pool(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.avg_pool2d(x.detach().float(), 2).bfloat16())
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), torch.full(x.shape, 0.25))


def test_real_side_gradients_and_feature_means_equal_the_whole_batch(small_blocks):
    net = create_network("convnet_w8", 1, 10, 16, seed=1)
    gen = make_generator(1)
    x = torch.randn(3, 12, 1, 16, 16, generator=gen)
    y = torch.arange(3).repeat_interleave(12).view(3, 12)
    params = {k: v.detach() for k, v in net.named_parameters()}
    blocked = per_class_gradients(net, params, x, y)
    for c in range(3):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        direct = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(net, leaves, (x[c],)), y[c]),
                                     list(leaves.values()))
        for i, k in enumerate(params):
            torch.testing.assert_close(blocked[k][c], direct[i], atol=1e-6, rtol=1e-4)

    flat, labels = x.reshape(36, 1, 16, 16), y.reshape(-1)
    means, emb = real_class_means(net, flat, labels, 3)
    with torch.no_grad():
        blocks, direct_emb = net.block_outputs(flat)
    torch.testing.assert_close(emb, direct_emb)
    for m, f in zip(means, (*blocks, direct_emb), strict=True):
        torch.testing.assert_close(m, f.reshape(3, 12, *f.shape[1:]).mean(1), atol=1e-6, rtol=1e-5)


def test_training_and_dm_in_blocks_equal_whole_batches(tiny_train, monkeypatch):
    protocol = EvalProtocol(name="t", epochs=2, batch_size=16, lr=0.01, dsa_strategy="")
    x = tiny_train.images(slice(0, 30))
    y = tiny_train.labels[:30]
    results = {}
    for budget in ("100", str(40 / 1024)):  # whole batches, then blocks of 5 rows
        monkeypatch.setenv("GENDISTILL_CPU_BLOCK_MB", budget)
        net = train_network(create_network("convnet_w8", 1, 10, 16, seed=0), x, y, protocol, make_generator(0))
        dm = get_method("dm").cls(dataclasses.replace(tiny_config("dm"), batch_real=12))
        results[budget] = (list(net.parameters()), dm.distill(tiny_train, 2, seed=0).images)
    (p_whole, dm_whole), (p_blocked, dm_blocked) = results.values()
    for a, b in zip(p_whole, p_blocked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dm_whole, dm_blocked, atol=1e-5, rtol=1e-4)


def test_test_passes_and_frozen_features_in_blocks_equal_whole_batches(tiny_train, tiny_test, monkeypatch):
    """The test pass (split_accuracy), the feature pass (embed) and the teacher's relabelling go through row blocks
    on CPU: same accuracy, same features (to float rounding) as whole batches."""
    from gendistill.evaluation import trainer
    from gendistill.evaluation.features import embed
    from gendistill.evaluation.trainer import split_accuracy

    net = create_network("convnet_w8", 1, 10, 16, seed=0).eval()
    x = tiny_train.images()
    monkeypatch.setenv("GENDISTILL_CPU_BLOCK_MB", "1000")  # whole batches
    whole_acc, (whole_f, whole_logits) = split_accuracy(net, tiny_test, 50), embed(net, x, logits=True)
    calls = []
    real_blocks = trainer.forward_in_blocks
    monkeypatch.setattr(trainer, "forward_in_blocks", lambda fn, xb, rows: calls.append(rows) or
                        real_blocks(fn, xb, rows))
    monkeypatch.setenv("GENDISTILL_CPU_BLOCK_MB", str(40 / 1024))  # 5 rows of a width-8 net on 16x16 images
    assert split_accuracy(net, tiny_test, 50) == whole_acc and set(calls) == {5}
    f, logits = embed(net, x, logits=True)
    assert torch.allclose(f, whole_f, atol=1e-5) and torch.allclose(logits, whole_logits, atol=1e-5)
