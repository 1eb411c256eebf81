"""The optional bfloat16 autocast of the evaluation networks (``$GENDISTILL_AUTOCAST``, ``gendistill --bf16``).

On a CPU without a bfloat16 unit torch emulates bfloat16, so these tests pretend the unit is there where they need the
autocast to run; nothing here is timed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_compiling import TINY
from test_evaluation import _synset

from gendistill.evaluation.evaluate import evaluate
from gendistill.nn import precision
from gendistill.nn.nets import create_network
from gendistill.utils.errors import ConfigError


@pytest.mark.parametrize(("value", "name"), [("", "auto"), ("auto", "auto"), ("0", None), ("fp32", None),
                                             ("bf16", "bf16"), ("BFloat16", "bf16")])
def test_the_environment_variable_names_the_precision(monkeypatch, value, name):
    monkeypatch.setenv("GENDISTILL_AUTOCAST", value)
    assert precision.autocast_name() == name


def test_an_unknown_precision_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("GENDISTILL_AUTOCAST", "fp8")
    with pytest.raises(ConfigError, match="not a precision"):
        precision.autocast_name()


def test_a_cpu_without_a_bfloat16_unit_is_refused(monkeypatch):
    monkeypatch.setenv("GENDISTILL_AUTOCAST", "bf16")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="avx512_bf16"):
        precision.autocast_dtype("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.autocast_dtype("cpu") is torch.bfloat16


def test_auto_is_bfloat16_only_for_convnets_with_instance_norm_on_a_cpu_with_the_unit(monkeypatch):
    monkeypatch.delenv("GENDISTILL_AUTOCAST", raising=False)  # unset: auto, the default
    convnet, batch_norm = create_network("convnet_w8", 1, 10, 16), create_network("convnet_w8_bn", 1, 10, 16)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.autocast_dtype("cpu", convnet) is torch.bfloat16
    assert precision.autocast_dtype("cpu", batch_norm) is None and precision.autocast_dtype("cpu") is None
    assert precision.autocast_dtype("cpu", create_network("mlp", 1, 10, 16)) is None
    assert precision.autocast_dtype("cuda", convnet) is None  # measured on CPUs only
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.autocast_dtype("cpu", convnet) is None  # emulated bfloat16 would be slower: float32
    monkeypatch.setenv("GENDISTILL_AUTOCAST", "0")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.autocast_dtype("cpu", convnet) is None


def test_the_cli_sets_the_precision_and_refuses_both_flags(monkeypatch, capsys):
    from gendistill.cli.main import main

    monkeypatch.setenv("GENDISTILL_AUTOCAST", "auto")
    assert main(["--bf16", "--fp32", "models"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--bf16 and --fp32" in err
    assert main(["--fp32", "models"]) == 0
    import os

    assert os.environ["GENDISTILL_AUTOCAST"] == "0"


def test_the_cpu_facts_come_from_one_parse_of_the_first_processor():
    from gendistill.utils.resources import cpu_info

    info = cpu_info()
    assert isinstance(info["model"], str) and isinstance(info["flags"], frozenset)
    assert precision.cpu_has_bf16() == bool({"avx512_bf16", "amx_bf16"} & info["flags"])


def test_the_wrapped_forward_computes_in_bfloat16_and_returns_float32():
    net = create_network("convnet_w8", 1, 10, 16, seed=0)
    seen = []
    net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    forward = precision.with_autocast(net, torch.device("cpu"), torch.bfloat16)
    out = forward(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(out, net(x), atol=0.1, rtol=0.05)  # the same function, to bfloat16's precision
    assert precision.with_autocast(net, torch.device("cpu"), None) is net


def test_a_bf16_evaluation_trains_in_bfloat16_and_is_recorded(tiny_train, tiny_test, monkeypatch):
    syn = _synset(tiny_train)
    proto = dataclasses.replace(TINY, ensemble="sequential")
    monkeypatch.setenv("GENDISTILL_AUTOCAST", "0")  # float32 requested
    fp32 = evaluate(syn, tiny_test, proto, progress=False)
    monkeypatch.setenv("GENDISTILL_AUTOCAST", "bf16")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    seen: set[torch.dtype] = set()
    original = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward", lambda self, x: _record(seen, original(self, x)))
    bf16 = evaluate(syn, tiny_test, proto, progress=False)
    assert fp32.autocast is None and bf16.autocast == "bf16" and bf16.to_dict()["autocast"] == "bf16"
    assert seen == {torch.bfloat16} and "bf16 autocast" in bf16.summary()
    assert all(0 <= a <= 100 for a in bf16.accs) and len(bf16.accs) == len(fp32.accs)
    monkeypatch.delenv("GENDISTILL_AUTOCAST")  # auto on a CPU with the unit: bfloat16 for this ConvNet
    auto = evaluate(syn, tiny_test, proto, progress=False)
    assert auto.autocast == "bf16" and auto.accs == bf16.accs


def _record(seen: set[torch.dtype], out: torch.Tensor) -> torch.Tensor:
    seen.add(out.dtype)
    return out

