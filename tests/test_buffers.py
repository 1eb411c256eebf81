"""Expert buffers: manifest round trip, exact per-epoch resume, extension, refusals, GSAM step, CLI."""

import json

import pytest
import torch
from torch import nn

import gendistill.baselines.trajectory.buffers as buffers
from gendistill.baselines.trajectory.buffers import BufferRecipe, ExpertBuffer, expert_optimizer, train_buffers
from gendistill.cli import main
from gendistill.data.datasets import RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.nn.nets import create_network
from gendistill.utils.errors import GendistillError
from gendistill.utils.seeding import derive_seed

TINY = dict(model="convnet_w8", batch_size=32, progress=False)


def test_manifest_round_trip(tmp_path, tiny_train):
    buf = train_buffers(tiny_train, tmp_path / "b", experts=2, epochs=2, seed=3, **TINY)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["format"] == "gendistill.buffer" and manifest["dataset"] == "tiny"
    assert manifest["preprocessing"] == tiny_train.preprocessing.describe()
    assert manifest["network"]["name"] == "convnet_w8" and manifest["recipe"]["optimizer"] == "sgd"
    assert manifest["recipe"]["momentum"] == 0 and manifest["recipe"]["weight_decay"] == 0
    assert manifest["in_progress"] is None and [e["index"] for e in manifest["experts"]] == [0, 1]
    assert not list((tmp_path / "b").glob("*.part"))
    again = ExpertBuffer(tmp_path / "b")
    assert again.num_experts == 2 and again.epochs == 2 and again.num_params == buf.num_params
    traj = again.trajectory(1)
    assert traj.shape == (3, buf.num_params) and torch.equal(again.snapshot(1, 2), traj[2])
    init = create_network("convnet_w8", 1, 10, 16, seed=derive_seed(3, "expert", 1, "init"))
    assert torch.equal(traj[0], buffers.flat_parameters(init))
    assert not torch.equal(traj[1], traj[0]) and not torch.equal(traj[2], traj[1])  # it trained
    memory = ExpertBuffer(tmp_path / "b", in_memory=True)
    assert torch.equal(memory.snapshot(0, 1), again.snapshot(0, 1))
    again.check_compatible(tiny_train, "convnet_w8")


def test_resume_per_epoch_and_extension_are_exact(tmp_path, tiny_train, monkeypatch):
    full = train_buffers(tiny_train, tmp_path / "full", experts=2, epochs=3, seed=1, **TINY)
    real_epoch = buffers._train_epoch
    calls = {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # expert 1, epoch 2
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(buffers, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_buffers(tiny_train, tmp_path / "cut", experts=2, epochs=3, seed=1, **TINY)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert len(manifest["experts"]) == 1 and manifest["in_progress"] == {"index": 1, "epochs_done": 1}
    monkeypatch.setattr(buffers, "_train_epoch", real_epoch)
    resumed = train_buffers(tiny_train, tmp_path / "cut", experts=2, epochs=3, seed=1, **TINY)
    for i in range(2):
        assert torch.equal(resumed.trajectory(i), full.trajectory(i))
    one = train_buffers(tiny_train, tmp_path / "grow", experts=1, epochs=3, seed=1, **TINY)
    assert one.num_experts == 1
    grown = train_buffers(tiny_train, tmp_path / "grow", experts=2, epochs=3, seed=1, **TINY)
    assert grown.num_experts == 2 and torch.equal(grown.trajectory(1), full.trajectory(1))


def test_a_build_killed_in_its_first_epoch_resumes_and_a_foreign_folder_is_refused(tmp_path, tiny_train,
                                                                                    monkeypatch):
    """The manifest is written before the first expert epoch, so a kill there leaves a resumable folder; a leftover
    temporary file of an interrupted atomic write does not block a rerun; anything else does."""
    full = train_buffers(tiny_train, tmp_path / "full", experts=1, epochs=2, seed=1, **TINY)
    real_epoch = buffers._train_epoch

    def dying_epoch(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(buffers, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_buffers(tiny_train, tmp_path / "cut", experts=1, epochs=2, seed=1, **TINY)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["experts"] == []
    monkeypatch.setattr(buffers, "_train_epoch", real_epoch)
    assert torch.equal(train_buffers(tiny_train, tmp_path / "cut", experts=1, epochs=2, seed=1, **TINY).trajectory(0),
                       full.trajectory(0))
    (tmp_path / "leftover").mkdir()
    (tmp_path / "leftover" / ".manifest.json.x1y2.tmp").write_text("{")  # a kill inside the first manifest write
    assert train_buffers(tiny_train, tmp_path / "leftover", experts=1, epochs=2, seed=1, **TINY).num_experts == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(GendistillError, match="holds no manifest.json"):
        train_buffers(tiny_train, tmp_path / "foreign", experts=1, epochs=2, seed=1, **TINY)


def test_mismatched_buffers_are_refused_in_one_line(tmp_path, tiny_train):
    buf = train_buffers(tiny_train, tmp_path / "b", experts=1, epochs=1, **TINY)
    other_space = RealDataset(tiny_train.pixels, tiny_train.labels, tiny_train.class_names,
                              Preprocessing((0.5,), (0.5,)), "tiny", "train")
    for train, model, needle in ((other_space, "convnet_w8", "other preprocessing"),
                                 (tiny_train, "convnet_w16", "convnet_w8 experts")):
        with pytest.raises(GendistillError, match=needle) as err:
            buf.check_compatible(train, model)
        assert "\n" not in str(err.value)
    with pytest.raises(GendistillError, match="other settings .*recipe"):
        train_buffers(tiny_train, tmp_path / "b", experts=2, epochs=1, **{**TINY, "batch_size": 16})
    path = tmp_path / "b" / "expert_000.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(GendistillError, match="checksum"):
        ExpertBuffer(tmp_path / "b").snapshot(0, 1)
    with pytest.raises(GendistillError, match="no manifest.json"):
        ExpertBuffer(tmp_path)


class _Quadratic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())


@pytest.mark.parametrize("adaptive", [False, True])
def test_gsam_step_on_a_quadratic(adaptive):
    """One expert-optimizer GSAM step against the hand-computed update (Zhuang et al., ICLR 2022):
    ascent to w + e(w), then the surrogate-gap decomposition of the perturbed gradient."""
    a = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w0 = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    lr, rho, alpha = 0.1, 0.05, 0.3
    model = _Quadratic(w0)
    opt = expert_optimizer(model, BufferRecipe(lr=lr, optimizer="gsam", rho=rho, alpha=alpha, adaptive=adaptive))

    def closure():
        opt.base.zero_grad(set_to_none=True)
        loss = 0.5 * model.w @ a @ model.w - b @ model.w
        loss.backward()
        return None, loss.detach()

    opt.step(closure)

    def grad(w):
        return a @ w - b

    g = grad(w0)
    scale = w0.abs() if adaptive else torch.ones_like(w0)
    e = (w0**2 if adaptive else 1.0) * g * rho / (scale * g).norm()
    gp = grad(w0 + e)
    cos = (g @ gp) / (g.norm() * gp.norm())
    vertical = g - cos * g.norm() * gp / gp.norm()
    expected = w0 - lr * (gp - alpha * vertical)
    assert torch.allclose(model.w.detach(), expected, atol=1e-10)
    assert (vertical @ gp).abs() < 1e-10  # the removed component is orthogonal to the perturbed gradient


def test_gsam_experts_train(tmp_path, tiny_train):
    buf = train_buffers(tiny_train, tmp_path / "g", experts=1, epochs=1, optimizer="gsam", **TINY)
    assert buf.recipe["optimizer"] == "gsam" and buf.recipe["rho"] == 0.01 and buf.recipe["alpha"] == 0.3
    assert torch.isfinite(buf.trajectory(0)).all()


def test_buffers_command(tmp_path, data_env, capsys):
    code = main(["--quiet", "--threads", "1", "buffers", "--dataset", "mnist", "--out", str(tmp_path / "b"),
                 "--experts", "1",
                 "--epochs", "1", "--model", "convnet_w8", "--images-per-class", "3"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 experts x 1 epochs" in out.out and "test accuracy" in out.out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["train_images"] == 30 and manifest["subset"]["images_per_class"] == 3
    assert manifest["recipe"]["dsa_strategy"] == "color_crop_cutout_scale_rotate"  # no flip for digits
    code = main(["--quiet", "--threads", "1", "buffers", "--dataset", "mnist", "--out", str(tmp_path / "c"),
                 "--images-per-class",
                 "99"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exceeds" in err[0]
