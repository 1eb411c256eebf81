"""The side-by-side speed scripts' own checks (``scripts/perf/compare.py``, ``table.py``); nothing is timed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1] / "scripts" / "perf"


@pytest.fixture
def perf_scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))
    import compare
    import table

    return compare, table


def test_a_warmup_that_leaves_no_timed_iteration_is_refused(perf_scripts, capsys):
    compare, _ = perf_scripts
    with pytest.raises(SystemExit) as exc:
        compare.main(["dsa", "--ref", "unused", "--iterations", "1", "--warmup", "1"])
    assert exc.value.code == 2
    assert "leaves no timed iteration" in capsys.readouterr().err


def test_intervals_after_the_warmup_are_timed(perf_scripts):
    compare, _ = perf_scripts
    # iterations + 1 prints (the first ends the start-up iteration); --iterations 1 --warmup 0 times one interval
    summary = compare.summarise([10.0, 13.0], [1.0, 2.0], warmup=0)
    assert summary["iterations_timed"] == 1 and summary["s_per_iteration_median"] == 3.0


def test_the_table_labels_compiled_rows_their_cache_and_settings_lowered_with_set(perf_scripts):
    _, table = perf_scripts
    records = [json.loads((PERF.parents[1] / "results" / "perf" / f"{name}.json").read_text())
               for name in ("evaluate_compiled_warm", "dm_compiled", "datm")]
    datm = records[2]
    datm["shared_changed"]["syn_steps"].pop("why", None)  # as compare.py records a --set change
    text = table.render(records)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert "ours compiled" in rows["`evaluate`"] and "inductor cache warm" in rows["`evaluate`"]
    assert "first iteration, untimed, ended after 17.5 s" in rows["`dm`"]
    assert "syn_steps 20 (published 80: lowered with --set)" in rows["`datm`"]


def test_the_table_names_each_rows_machine_and_our_side_only_settings(perf_scripts):
    _, table = perf_scripts
    old = json.loads((PERF.parents[1] / "results" / "perf" / "dm.json").read_text())
    new = json.loads(json.dumps(old))
    new["machine"] = {**old["machine"], "avx512_bf16": True, "cpu_family": "26"}
    new["ours_set"] = ["amp_real=true"]
    text = table.render([old, new])
    rows = [line for line in text.splitlines() if line.startswith("| `dm`")]
    assert len(rows) == 2 and {row.split("|")[9].strip() for row in rows} == {"A", "B"}
    assert sum("ours only: `amp_real=true`" in row for row in rows) == 1
    assert '- B: {"avx512_bf16": true' in text or '- A: {"avx512_bf16": true' in text
    evaluation = json.loads((PERF.parents[1] / "results" / "perf" / "evaluate.json").read_text())
    evaluation["ours_autocast"] = "bf16"
    assert "ours under bf16 autocast (`--bf16`)" in table.render([evaluation])
    evaluation["conditions"] = "other jobs stopped for the run"
    assert "; other jobs stopped for the run |" in table.render([evaluation])


def test_our_side_only_settings_are_refused_for_the_evaluation(perf_scripts, tmp_path):
    compare, _ = perf_scripts
    with pytest.raises(SystemExit) as err:
        compare.main(["evaluate", "--ref", str(tmp_path), "--ours-set", "amp_real=true"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        compare.main(["dm", "--ref", str(tmp_path), "--bf16"])
    assert err.value.code == 2


def test_op_profile_gives_a_compared_method_our_side_of_the_comparison(perf_scripts, tmp_path):
    """cafe is timed on random CIFAR-10-shaped data: its profile gets the same data, shared settings and overrides."""
    import argparse

    import op_profile

    from gendistill.data.datasets import load_dataset

    args = argparse.Namespace(random_per_class=5, sets=["lr_img=0.2"], experts=1, expert_epochs=1, threads=1)
    data_root, zca, sets, what = op_profile._as_compared("cafe", tmp_path, args)
    assert zca is None and "lr_img=0.2" in sets and "dsa=false" in sets and "init=noise" in sets
    assert "lr_img 0.2 (published 0.1)" in what
    assert len(load_dataset("cifar10", data_root).train) == 50
    assert op_profile._as_compared("dm", tmp_path, args) is None  # compared on the real MNIST files


def test_igd_influence_script_compares_the_batched_step_with_the_per_image_loop(tiny_train):
    """The script's loop is the authors' per-image form: it agrees with the package's batched influence step."""
    import sys

    sys.path.insert(0, str(PERF))
    try:
        import igd_influence
    finally:
        sys.path.remove(str(PERF))
    from test_guided import tiny_backbone

    result = igd_influence.measure(tiny_backbone(), tiny_train, network="convnet_w8", snapshots=2, repeats=1)
    assert result["max_rel_diff"] < 1e-4 and result["batched_s"] > 0 and result["loop_s"] > 0


def test_rounds_pool_every_timed_iteration_and_the_loss_statistics(perf_scripts):
    compare, _ = perf_scripts
    first = compare.summarise([0.0, 3.0, 7.0], [5.0, 1.0, 2.0], warmup=0)
    second = compare.summarise([0.0, 5.0, 6.0], [5.0, 4.0, 6.0], warmup=0)
    pooled = compare.pooled_summary([first, second])
    assert pooled["s_per_iteration_all"] == [3.0, 4.0, 5.0, 1.0] and pooled["s_per_iteration_median"] == 3.5
    losses = [1.0, 2.0, 4.0, 6.0]  # each round keeps the losses after its start-up iteration
    assert pooled["n_loss"] == 4 and pooled["loss_mean"] == pytest.approx(3.25)
    assert pooled["loss_std"] == pytest.approx(statistics.pstdev(losses))
    assert compare.pooled_summary([first]) is first


def test_rounds_alternate_which_side_goes_first(perf_scripts):
    compare, _ = perf_scripts
    order = []
    reference, ours, firsts = compare.alternate_rounds(
        3, lambda i: order.append(("reference", i)) or 2.0 + i, lambda i: order.append(("ours", i)) or 1.0 + i)
    assert order == [("reference", 0), ("ours", 0), ("ours", 1), ("reference", 1), ("reference", 2), ("ours", 2)]
    assert reference == [2.0, 3.0, 4.0] and ours == [1.0, 2.0, 3.0] and firsts == ["reference", "ours", "reference"]
    assert [r["ratio"] for r in compare.round_ratios(firsts, reference, ours)] == [2.0, 1.5, 4.0 / 3.0]


def test_rounds_take_a_positive_count(perf_scripts, tmp_path, capsys):
    compare, table = perf_scripts
    for argv in (["evaluate", "--ref", str(tmp_path), "--rounds", "0"],
                 ["dsa", "--ref", str(tmp_path), "--rounds", "0"]):
        with pytest.raises(SystemExit) as exc:
            compare.main(argv)
        assert exc.value.code == 2 and "--rounds" in capsys.readouterr().err
    record = json.loads((PERF.parents[1] / "results" / "perf" / "dm.json").read_text())
    record["rounds"] = [{"first": "reference", "reference_s": 2.0, "ours_s": 1.0, "ratio": 2.0},
                        {"first": "ours", "reference_s": 2.4, "ours_s": 1.6, "ratio": 1.5}]
    assert "2 rounds, alternating which side goes first, timed iterations pooled (per-round ratios 2.00, 1.50)" \
        in table.render([record])


def test_the_reference_profile_covers_only_the_timed_iterations(perf_scripts, tmp_path):
    compare, _ = perf_scripts
    script = tmp_path / "fake_reference.py"  # a stand-in reference: one op per phase between its timing prints
    script.write_text(
        "import torch\n"
        "x = torch.ones(8, 8)\n"
        "for it in range(4):\n"
        f"    {compare.PERF.format(loss=1.0)}\n"
        "    if it == 0: torch.cos(x)\n"
        "    if it in (1, 2): torch.mm(x, x)\n"
        "    if it == 3: torch.tanh(x)\n")
    out = tmp_path / "table.txt"
    env = {**compare.reference_env(tmp_path, compare.SETTINGS["dm"]), "PERF_PROFILE": str(out),
           "PERF_PROFILE_START": "1", "PERF_PROFILE_STOP": "3", "PERF_PROFILE_ROWS": "20"}
    compare.run([compare.sys.executable, str(script)], tmp_path, 1, env)
    table = out.read_text()
    assert "aten::mm" in table and "aten::cos" not in table and "aten::tanh" not in table


def test_the_reference_profile_is_refused_where_it_does_not_apply(perf_scripts, tmp_path, capsys):
    compare, _ = perf_scripts
    for argv in (["evaluate", "--ref", str(tmp_path), "--profile-reference", str(tmp_path / "p.txt")],
                 ["dm", "--ref", str(tmp_path), "--profile-reference", str(tmp_path / "p.txt"), "--rounds", "2"]):
        with pytest.raises(SystemExit) as exc:
            compare.main(argv)
        assert exc.value.code == 2 and "--profile-reference" in capsys.readouterr().err


def test_the_written_out_instance_norm_backward_has_group_norms_derivatives(monkeypatch):
    import torch
    from torch import nn

    monkeypatch.syspath_prepend(str(PERF))
    from instance_norm_double_backward import InstanceNorm

    gen = torch.Generator().manual_seed(0)
    ours, ref = InstanceNorm(4).double(), nn.GroupNorm(4, 4).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        ours.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    results = []
    for module in (ours, ref):
        first = torch.autograd.grad((module(x) * dy).sum(), [x, module.weight], create_graph=True)
        second = torch.autograd.grad(sum((g ** 2).sum() for g in first), [x, module.weight])
        results.append((module(x), *first, *second))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    w, b = ours.weight.detach().clone().requires_grad_(), ours.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: torch.func.functional_call(ours, {"weight": w, "bias": b}, (x,)), (x, w, b))


def test_one_iteration_per_round_gets_no_loss_verdict(perf_scripts):
    _, table = perf_scripts
    record = json.loads((PERF.parents[1] / "results" / "perf" / "avx512_bf16" / "dc_compiled_rounds.json").read_text())
    assert record["reference"]["iterations_timed"] == len(record["rounds"]) == 2
    row = table.render([record])
    assert "n/a, one iteration per round" in row and "**no**" not in row


def test_the_machine_probe_reports_three_positive_rates(perf_scripts, monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))
    import machine_probe

    rec = machine_probe.probe(threads=1, repeats=1)
    assert rec["threads"] == 1
    assert all(rec[k] > 0 for k in ("conv_gflops", "gemm_gflops", "copy_gbs"))
    with pytest.raises(SystemExit) as exc:
        machine_probe.main(["--threads", "0"])
    assert exc.value.code == 2


def test_the_table_shows_the_machine_probe_before_and_after(perf_scripts):
    _, table = perf_scripts
    evaluation = json.loads((PERF.parents[1] / "results" / "perf" / "evaluate.json").read_text())
    assert "machine probe" not in table.render([evaluation])  # older records have none
    evaluation["probe_before"] = {"threads": 2, "conv_gflops": 180.4, "gemm_gflops": 150.0, "copy_gbs": 21.96}
    evaluation["probe_after"] = {"threads": 2, "conv_gflops": 120.0, "gemm_gflops": 149.0, "copy_gbs": 12.0}
    assert "machine probe before / after: conv 180 / 120 GFLOP/s, copy 22.0 / 12.0 GB/s" in table.render([evaluation])


def test_the_precision_check_refuses_empty_counts(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PERF))
    import precision_check

    with pytest.raises(SystemExit) as exc:
        precision_check.main(["mnist", "10", "100", "--runs", "0"])
    assert exc.value.code == 2 and "positive counts" in capsys.readouterr().err
