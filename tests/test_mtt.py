"""MTT: the matching loss, the unrolled gradient against finite differences, TESLA = unrolled, the method."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gendistill.baselines.trajectory.buffers import train_buffers
from gendistill.baselines.trajectory.mtt import (
    FlatNetwork,
    MatchingTrainingTrajectories,
    MTTConfig,
    matching_loss,
    plan_steps,
    tesla_matching_loss,
    unrolled_matching_loss,
)
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import default_protocol
from gendistill.nn.augment import DSA
from gendistill.nn.nets import create_network
from gendistill.runs import RunDir
from gendistill.utils.errors import CheckpointError, ConfigError, GendistillError
from gendistill.utils.seeding import derive_seed, make_generator

TINY = dict(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, buffer_experts=1, buffer_epochs=2,
            buffer_batch=32, model="convnet_w8")


def test_matching_loss_on_hand_made_vectors():
    start = torch.tensor([0.0, 0.0, 1.0])
    target = torch.tensor([3.0, 4.0, 1.0])  # ||start - target||^2 = 25
    theta = torch.tensor([1.0, 1.0, 2.0])  # ||theta - target||^2 = 4 + 9 + 1 = 14
    assert matching_loss(theta, start, target).item() == pytest.approx(14 / 25)
    assert matching_loss(target, start, target).item() == 0.0
    assert matching_loss(start, start, target).item() == pytest.approx(1.0)


def _problem(steps=3, soft=False, seed=0):
    """A float64 student (ConvNet-1, width 4, 8x8 inputs, 3 classes), 6 synthetic images, DSA plan."""
    torch.manual_seed(seed)
    net = create_network("convnet_d1_w4", 1, 3, 8, seed=seed).double()
    student = FlatNetwork(net)
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    target = start + 0.05 * torch.randn(start.shape, dtype=torch.float64)
    images = torch.randn(6, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    if soft:
        targets = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)

        def loss_fn(out, y):
            return -(F.softmax(y, 1) * F.log_softmax(out, 1)).sum(1).mean()
    else:
        targets = torch.tensor([0, 0, 1, 1, 2, 2])
        loss_fn = F.cross_entropy
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    dsa = DSA("color_crop_cutout_scale_rotate")
    plan = plan_steps(6, steps, 4, 8, dsa, torch.Generator().manual_seed(seed + 1))
    return student, loss_fn, images, targets, lr, plan, dsa, start, target


def test_unrolled_gradient_matches_finite_differences():
    student, loss_fn, images, targets, lr, plan, dsa, start, target = _problem()
    loss = unrolled_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target)
    loss.backward()

    def value(x, a):
        with torch.enable_grad():
            return unrolled_matching_loss(student, loss_fn, x, targets, a, plan, dsa, start, target).item()

    eps = 1e-6
    x0, a0 = images.detach(), lr.detach()
    for flat_index in (3, 70, 200, 380):
        dx = torch.zeros_like(x0).view(-1)
        dx[flat_index] = eps
        dx = dx.view_as(x0)
        fd = (value(x0 + dx, a0) - value(x0 - dx, a0)) / (2 * eps)
        assert images.grad.view(-1)[flat_index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
    fd_lr = (value(x0, a0 + eps) - value(x0, a0 - eps)) / (2 * eps)
    assert lr.grad.item() == pytest.approx(fd_lr, rel=1e-5)
    assert images.grad.abs().sum() > 0


@pytest.mark.parametrize("soft", [False, True])
def test_tesla_equals_the_unrolled_gradient(soft):
    student, loss_fn, images, targets, lr, plan, dsa, start, target = _problem(steps=4, soft=soft)
    loss = unrolled_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target)
    loss.backward()
    ref = {"x": images.grad.clone(), "lr": lr.grad.clone()}
    if soft:
        ref["y"] = targets.grad.clone()
    for leaf in (images, lr, targets):
        leaf.grad = None
    tesla = tesla_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target)
    assert tesla.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.allclose(images.grad, ref["x"], rtol=1e-9, atol=1e-12)
    assert torch.allclose(lr.grad, ref["lr"], rtol=1e-9, atol=1e-12)
    if soft:
        assert torch.allclose(targets.grad, ref["y"], rtol=1e-9, atol=1e-12)
    # the TESLA reference code's gradient holds the adjoint at theta_N: different for N > 1 ...
    for leaf in (images, lr, targets):
        leaf.grad = None
    tesla_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target, exact=False)
    assert not torch.allclose(images.grad, ref["x"], rtol=1e-6)


def test_detached_tesla_is_exact_for_one_step():
    student, loss_fn, images, targets, lr, plan, dsa, start, target = _problem(steps=1)
    unrolled_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target).backward()
    ref = images.grad.clone(), lr.grad.clone()
    images.grad = lr.grad = None
    tesla_matching_loss(student, loss_fn, images, targets, lr, plan, dsa, start, target, exact=False)
    assert torch.allclose(images.grad, ref[0], rtol=1e-10) and torch.allclose(lr.grad, ref[1], rtol=1e-10)


def test_minibatches_follow_the_reference_chunking():
    plan = plan_steps(10, 4, 4, 8, DSA("none"), torch.Generator().manual_seed(0))
    sizes = [len(p.indices) for p in plan]
    assert sizes == [2, 4, 4, 2]  # chunks of a permutation popped from the end, a fresh one when empty
    assert sorted(torch.cat([p.indices for p in plan[:3]]).tolist()) == list(range(10))
    assert all(p.draw is None for p in plan)


def test_a_plan_for_a_device_holds_its_indices_and_draws_there():
    """The student steps index and augment without host-device copies: the plan is moved once, when made
    (the ``meta`` device stands in for a GPU); on the CPU the plan is the same as without a device."""
    dsa = DSA("color_crop_cutout_scale_rotate")
    cpu = plan_steps(10, 5, 4, 8, dsa, torch.Generator().manual_seed(0))
    same = plan_steps(10, 5, 4, 8, dsa, torch.Generator().manual_seed(0), device="cpu")
    moved = plan_steps(10, 5, 4, 8, dsa, torch.Generator().manual_seed(0), device="meta")
    for a, b, m in zip(cpu, same, moved, strict=True):
        assert torch.equal(a.indices, b.indices) and a.draw.family == b.draw.family == m.draw.family
        assert all(torch.equal(a.draw.values[k], b.draw.values[k]) for k in a.draw.values)
        assert m.indices.device.type == "meta" and m.indices.shape == a.indices.shape
        assert all(v.device.type == "meta" for v in m.draw.values.values())


def test_mtt_learns_lr_and_the_exact_sweep_gives_the_same_set(tiny_train):
    syn = MatchingTrainingTrajectories(MTTConfig(**TINY)).distill(tiny_train, 2, seed=0, progress=False)
    assert syn.lr is not None and syn.lr != 0.01 and syn.meta["grad"] == "unroll"
    assert syn.meta["buffer"]["experts"] == 1 and default_protocol(syn) == "mtt"
    sweep = MatchingTrainingTrajectories(MTTConfig(**TINY, grad="exact_sweep")).distill(tiny_train, 2, seed=0,
                                                                                       progress=False)
    assert torch.allclose(sweep.images, syn.images, atol=1e-4) and sweep.lr == pytest.approx(syn.lr, rel=1e-4)


def test_grad_tesla_is_the_published_detached_gradient(monkeypatch):
    """``grad: tesla`` is what TESLA's code computes (the adjoint held at lambda_N); the exact gradient is
    ``exact_sweep``."""
    from gendistill.baselines.trajectory import mtt as module

    calls = []
    monkeypatch.setattr(module, "tesla_matching_loss", lambda *a, exact: calls.append(exact) or torch.zeros(()))
    for grad in ("tesla", "exact_sweep"):
        m = MatchingTrainingTrajectories(MTTConfig(**TINY, grad=grad))
        m._flat = object()  # not used by the patched loss
        state = {"images": torch.zeros(2, 1, 4, 4), "syn_lr": torch.tensor(0.01)}
        m._optimizers = lambda s: []
        m.student_targets = lambda s, t: torch.zeros(2, dtype=torch.long)
        m.matching_gradients(state, type("T", (), {"flip_ok": True})(), [], None, None)
    assert calls == [False, True]


def test_teacher_labels_are_the_target_experts_softmax_and_evaluate_under_tesla(tiny_train, tiny_test):
    syn = MatchingTrainingTrajectories(MTTConfig(**TINY, grad="tesla", teacher_label=True)).distill(
        tiny_train, 2, seed=0, progress=False)
    assert syn.soft and syn.labels.shape == (20, 10) and syn.meta["default_protocol"] == "tesla"
    assert torch.allclose(syn.labels.sum(1), torch.ones(20), atol=1e-5)
    result = evaluate(syn, tiny_test, runs=1, epochs=1, progress=False)
    assert result.protocol["name"] == "tesla" and result.protocol["label_loss"] == "soft_ce"


def _interrupted_at(stop_it: int) -> type:
    """MTT that raises KeyboardInterrupt at iteration ``stop_it`` (a run interrupted after its checkpoint)."""

    class Stop(MatchingTrainingTrajectories):
        def step(self, it, *args):
            if it == stop_it:
                raise KeyboardInterrupt
            return super().step(it, *args)

    Stop.name = "mtt"
    return Stop


def test_run_folder_buffer_resume_and_refusal(tmp_path, tiny_train):
    cfg = MTTConfig(**{**TINY, "iterations": 4})
    full = MatchingTrainingTrajectories(cfg).distill(tiny_train, 1, seed=2, run=RunDir(tmp_path / "a"),
                                                     progress=False)
    assert (tmp_path / "a" / "buffer" / "manifest.json").is_file()

    Stop = _interrupted_at(3)
    with pytest.raises(KeyboardInterrupt):
        Stop(cfg).distill(tiny_train, 1, seed=2, run=RunDir(tmp_path / "b", checkpoint_every=2), progress=False)
    resumed = MatchingTrainingTrajectories(cfg).distill(tiny_train, 1, seed=2, progress=False,
                                                        run=RunDir(tmp_path / "b", resume=True, checkpoint_every=2))
    assert torch.equal(resumed.images, full.images) and resumed.lr == full.lr
    other = train_buffers(tiny_train, tmp_path / "w4", experts=1, epochs=2, model="convnet_w4", progress=False)
    with pytest.raises(GendistillError, match="convnet_w4 experts"):
        MatchingTrainingTrajectories(dataclasses.replace(cfg, buffer=str(other.path))).distill(tiny_train, 1,
                                                                                              progress=False)
    with pytest.raises(GendistillError, match="expert_epochs"):
        too_late = dataclasses.replace(cfg, buffer=str(tmp_path / "a" / "buffer"), max_start_epoch=3)
        MatchingTrainingTrajectories(too_late).distill(tiny_train, 1, progress=False)


def _two_expert_buffer(tiny_train, path):
    return train_buffers(tiny_train, path, experts=2, epochs=2, model="convnet_w8", batch_size=32, progress=False)


def test_two_distills_on_one_instance_equal_fresh_instances(tmp_path, tiny_train):
    buf = _two_expert_buffer(tiny_train, tmp_path / "buf")
    cfg = MTTConfig(**{**TINY, "iterations": 2, "buffer": str(buf.path)})
    orders = {s: torch.randperm(2, generator=make_generator(derive_seed(s, "experts", 0))).tolist() for s in (0, 2)}
    assert orders[0] != orders[2]  # so a stale expert order would show
    one = MatchingTrainingTrajectories(cfg)
    first, second = (one.distill(tiny_train, 1, seed=s, progress=False) for s in (0, 2))
    for syn, s in ((first, 0), (second, 2)):
        fresh = MatchingTrainingTrajectories(cfg).distill(tiny_train, 1, seed=s, progress=False)
        assert torch.equal(syn.images, fresh.images) and syn.lr == fresh.lr


def test_resume_refuses_a_changed_buffer_in_one_line(tmp_path, tiny_train):
    buf = _two_expert_buffer(tiny_train, tmp_path / "buf")
    cfg = MTTConfig(**{**TINY, "iterations": 4, "buffer": str(buf.path)})

    Stop = _interrupted_at(3)
    with pytest.raises(KeyboardInterrupt):
        Stop(cfg).distill(tiny_train, 1, seed=0, run=RunDir(tmp_path / "r", checkpoint_every=2), progress=False)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["buffer_identity"] == buf.identity()
    train_buffers(tiny_train, buf.path, experts=3, epochs=2, model="convnet_w8", batch_size=32, progress=False)
    with pytest.raises(CheckpointError, match="experts 2 -> 3.*experts_sha256") as err:
        MatchingTrainingTrajectories(cfg).distill(tiny_train, 1, seed=0, progress=False,
                                                  run=RunDir(tmp_path / "r", resume=True, checkpoint_every=2))
    assert "\n" not in str(err.value) and "another --out" in str(err.value)


@pytest.mark.parametrize("key,value", [("expert_epochs", 0), ("syn_steps", 0), ("batch_syn", -1)])
def test_bad_step_settings_are_refused_in_one_line(tiny_train, key, value):
    with pytest.raises(ConfigError, match=f"{key} must be at least") as err:
        MatchingTrainingTrajectories(MTTConfig(**{**TINY, key: value})).distill(tiny_train, 1, progress=False)
    assert "\n" not in str(err.value)


def test_cli_distill_with_the_cpu_preset_trains_experts_in_the_run(tmp_path, data_env, capsys):
    from gendistill.cli import main
    from gendistill.synset.format import SyntheticSet

    out = tmp_path / "run"
    tiny = ["iterations=2", "model=convnet_w8", "buffer_experts=1", "buffer_epochs=2", "buffer_images_per_class=2",
            "buffer_batch=10", "syn_steps=2", "batch_syn=5", "max_start_epoch=1"]
    args = ["--quiet", "--threads", "1", "distill", "--method", "mtt", "--dataset", "mnist", "--ipc", "1",
            "--out", str(out), "--preset", "cpu", *[a for kv in tiny for a in ("--set", kv)]]
    assert main(args) == 0, capsys.readouterr().err
    syn = SyntheticSet.load(out)
    assert syn.meta["reduced_budget"] and syn.meta["buffer"]["path"] == str(out / "buffer")
    assert "override buffer_experts 1 < 4" in syn.meta["budget_reductions"]
    assert (out / "buffer" / "expert_000.safetensors").is_file() and syn.lr is not None
    bad = ["--quiet", "--threads", "1", "distill", "--method", "mtt", "--dataset", "mnist", "--ipc", "1", "--out",
           str(tmp_path / "z"),
           "--set", "buffer=" + str(out / "buffer"), "--set", "iterations=1"]
    assert main(bad) == 2  # the buffer holds convnet_w8 experts, the default student is convnet
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "convnet_w8 experts" in err[0]


def test_bench_trajectory_tiny_memory_grows_with_steps_only_when_unrolling(tmp_path, data_env, monkeypatch):
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_trajectory

    out = tmp_path / "bench"
    assert bench_trajectory.main(["--tiny", "--steps", "1,4", "--out", str(out)]) == 0
    report = json.loads((out / "trajectory_cpu.json").read_text())
    saved = {(r["grad"], r["syn_steps"]): r["saved_tensors_peak_mb"] for r in report["matching"]}
    assert saved[("unroll", 4)] > 3 * saved[("unroll", 1)]
    assert saved[("exact_sweep", 4)] < 1.5 * saved[("exact_sweep", 1)]
    assert all(v < 1e-4 for v in report["exact_sweep_agreement"].values())
    assert report["buffers"]["train_buffers_images_per_s"] > 0 and report["buffers"]["plain_loop_images_per_s"] > 0
    assert "| exact_sweep | 4 |" in (out / "trajectory_cpu.md").read_text()
