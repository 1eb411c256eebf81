"""The optional ``torch.compile`` of the evaluation networks (``$GENDISTILL_COMPILE``, ``gendistill --compile``).

The tests use the ``aot_eager`` backend: the same graph capture and autograd split as inductor, without its C++
code generation (which takes ~20 s per graph on 2 cores)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_evaluation import _synset

from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import EvalProtocol
from gendistill.nn.compiling import RECOMPILE_LIMIT, compile_backend, network_forward
from gendistill.nn.nets import create_network
from gendistill.utils.errors import ConfigError

TINY = EvalProtocol(name="dsa", model="convnet_w8", epochs=4, batch_size=16, runs=2,
                    dsa_strategy="color_crop_cutout_flip_scale_rotate")


@pytest.mark.parametrize(("value", "backend"), [("", None), ("0", None), ("off", None), ("1", "inductor"),
                                                ("true", "inductor"), ("aot_eager", "aot_eager")])
def test_the_environment_variable_names_the_backend(monkeypatch, value, backend):
    monkeypatch.setenv("GENDISTILL_COMPILE", value)
    assert compile_backend() == backend


def test_an_unknown_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("GENDISTILL_COMPILE", "nosuchbackend")
    with pytest.raises(ConfigError, match="not a torch.compile backend"):
        compile_backend()


def test_off_by_default_returns_the_network_itself(monkeypatch):
    monkeypatch.delenv("GENDISTILL_COMPILE", raising=False)
    net = create_network("convnet_w8", 1, 10, 16, seed=0)
    assert network_forward(net) is net


def test_networks_built_afresh_reuse_one_compiled_graph(monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("GENDISTILL_COMPILE", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (0, 1, 2):  # as the evaluation builds one network per run
        net = create_network("convnet_w8", 1, 10, 16, seed=seed)
        out = network_forward(net)(x)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)  # the same function as eager
        out.sum().backward()  # the compiled graph has a backward
        outs.append(out.detach())
        assert all(p.grad is not None for p in net.parameters())
    assert counters["stats"]["unique_graphs"] == 1  # the second and third networks recompiled nothing
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT  # torch's default 8 would fall back to eager
    assert not torch.allclose(outs[0], outs[1])  # each network's own weights were used, not the first one's


def test_a_compiled_evaluation_matches_eager_and_is_recorded(tiny_train, tiny_test, monkeypatch):
    syn = _synset(tiny_train)
    proto = dataclasses.replace(TINY)
    monkeypatch.delenv("GENDISTILL_COMPILE", raising=False)
    eager = evaluate(syn, tiny_test, proto, progress=False)
    monkeypatch.setenv("GENDISTILL_COMPILE", "aot_eager")
    torch._dynamo.reset()
    compiled = evaluate(syn, tiny_test, proto, progress=False)
    assert eager.compiled is None and compiled.compiled == "aot_eager"
    assert compiled.to_dict()["compiled"] == "aot_eager"
    assert compiled.accs == pytest.approx(eager.accs, abs=100 / len(tiny_test) + 1e-9)  # at most one test image


@pytest.mark.parametrize(("flag", "variable", "value", "bad"), [
    ("--compile", "GENDISTILL_COMPILE", "1", "nosuchbackend"), ("--bf16", "GENDISTILL_AUTOCAST", "bf16", "half")])
def test_the_global_flag_sets_the_environment_and_a_bad_value_is_refused(monkeypatch, capsys, flag, variable, value,
                                                                          bad):
    """``--compile`` and ``--bf16`` (gendistill.nn.precision) set their variable; a bad value is one line on stderr."""
    from gendistill.cli.main import main

    monkeypatch.setenv(variable, "0")  # recorded, so the value the flag writes is undone afterwards
    assert main([flag, "methods"]) == 0
    import os

    assert os.environ[variable] == value
    monkeypatch.setenv(variable, bad)
    assert main(["methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and variable in err[0]


@pytest.mark.parametrize("name", ["dm", "dc"])
def test_methods_distil_the_same_set_compiled(name, tiny_train, monkeypatch):
    """DM's embeddings and DC's inner-loop training (the shared ``train_network``) run compiled when asked, to the
    same synthetic set as eager up to float reassociation."""
    from test_registry import tiny_config
    from torch._dynamo.utils import counters

    from gendistill.registry import get_method

    cfg = dataclasses.replace(tiny_config(name), iterations=2)
    monkeypatch.delenv("GENDISTILL_COMPILE", raising=False)
    eager = get_method(name).cls(cfg).distill(tiny_train, 2, seed=0)
    monkeypatch.setenv("GENDISTILL_COMPILE", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = get_method(name).cls(cfg).distill(tiny_train, 2, seed=0)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled path ran
    torch.testing.assert_close(compiled.images, eager.images, rtol=1e-4, atol=1e-4)


def test_the_real_side_of_gradient_matching_runs_through_the_compiled_forward(monkeypatch):
    """DC/DSA's real-side gradients (constant images, ``params`` views of the network's own) use the compiled
    forward and equal the eager ones; parameters that are not the network's keep the uncompiled functional path."""
    from torch._dynamo.utils import counters

    from gendistill.baselines.matching import per_class_gradients

    net = create_network("convnet_w8", 1, 3, 16, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 1, 16, 16, generator=gen)
    y = torch.arange(3).repeat_interleave(6).view(3, 6)
    views = {k: v.detach() for k, v in net.named_parameters()}
    monkeypatch.delenv("GENDISTILL_COMPILE", raising=False)
    eager = per_class_gradients(net, views, x, y)
    monkeypatch.setenv("GENDISTILL_COMPILE", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = per_class_gradients(net, views, x, y)
    assert counters["stats"]["unique_graphs"] == 1
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in net.parameters())  # gradients are returned, never accumulated
    counters.clear()
    copies = {k: v.clone() for k, v in views.items()}  # not the network's storage: functional_call, not compiled
    functional = per_class_gradients(net, copies, x, y)
    assert counters["stats"]["unique_graphs"] == 0
    for k in eager:
        torch.testing.assert_close(functional[k], eager[k], atol=1e-6, rtol=1e-4)
