"""A full disk (ENOSPC injected at the write calls) and corrupt artefacts: the previous state stays intact and
loadable, the error is one line naming the file and what to do, and the rerun after space returns completes. Also:
no file is ever read with code execution (pickle) outside the documented ``trust_pickle`` path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_cli import run_err, run_ok

from faults.report import tally
from gendistill.utils import faults

pytestmark = pytest.mark.faults


@pytest.fixture
def inject(monkeypatch):
    """Set an in-process fault plan (``GENDISTILL_FAULTS``) for one call."""
    def plan(spec: str) -> None:
        monkeypatch.setenv("GENDISTILL_FAULTS", spec)
        monkeypatch.setattr(faults, "_PLAN", None)
        monkeypatch.setattr(faults, "_SEEN", {})

    yield plan
    monkeypatch.setattr(faults, "_PLAN", {})


DM = ["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke", "--set", "iterations=6",
      "--checkpoint-every", "2"]


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_rerun_completes(tmp_path, data_env, capsys,
                                                                                     inject):
    out = tmp_path / "run"
    # writes: config.yaml, env.json, checkpoint at 2, checkpoint at 4 (the 4th write) fails
    inject("enospc@write#4")
    line = run_err([*DM, "--out", str(out)], capsys)
    assert "No space left on device" in line
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # the checkpoint of iteration 2, intact
    assert saved["iteration"] == 2
    assert not list(out.glob(".checkpoint.pt.*.tmp"))  # no half-written temporary left behind
    inject("")
    run_ok([*DM[:1], "--resume", "--out", str(out)], capsys)
    assert (out / "synset" / "synset.json").is_file()
    tally("full disk", "checkpoint write (dm)", injected=1, survived=1, clean_errors=1)


def test_a_full_disk_when_saving_the_set_or_a_result_is_one_line_and_recoverable(tmp_path, data_env, capsys,
                                                                                  inject):
    out = tmp_path / "run"
    inject("enospc@write#5")  # config, env, 2 checkpoints, then the synset folder
    line = run_err([*DM, "--out", str(out)], capsys)
    assert "No space left on device" in line and not (out / "synset").exists()
    inject("")
    run_ok(["distill", "--resume", "--out", str(out)], capsys)
    inject("enospc@write#1")
    line = run_err(["eval", "--synset", str(out), "--runs", "1", "--epochs", "1", "--model", "convnet_w8",
                    "--json", str(tmp_path / "result.json")], capsys)
    assert "No space left on device" in line and not (tmp_path / "result.json").exists()
    tally("full disk", "synset and result writes", injected=2, survived=2, clean_errors=2)


def test_a_full_disk_during_an_expert_buffer_keeps_the_finished_epochs(tmp_path, data_env, capsys, inject):
    out = tmp_path / "buffer"
    args = ["buffers", "--dataset", "mnist", "--out", str(out), "--experts", "1", "--epochs", "3", "--model",
            "convnet_w8", "--batch", "8"]
    inject("enospc@write#4")
    assert "No space left on device" in run_err(args, capsys)
    inject("")
    run_ok(args, capsys)  # resumes from the epochs that were written
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["experts"]) == 1
    tally("full disk", "expert buffer write", injected=1, survived=1, clean_errors=1)


# ---------------------------------------------------------------------------------------- corruption
@pytest.fixture
def finished(tmp_path, data_env, capsys) -> Path:
    out = tmp_path / "run"
    run_ok([*DM, "--out", str(out)], capsys)
    return out


def _flip_a_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_set_is_refused_naming_the_file(finished, capsys, damage):
    tensors = finished / "synset" / "synset.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-100])
    else:
        _flip_a_byte(tensors)
    line = run_err(["eval", "--synset", str(finished), "--runs", "1", "--epochs", "1"], capsys)
    assert "synset" in line and ("checksum" in line or "truncated" in line or "corrupt" in line)
    tally("corrupt artefact", f"synset ({damage})", injected=1, survived=1, clean_errors=1)


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    run_ok([*DM[:-2], "--set", "iterations=2", "--checkpoint-every", "1", "--out", str(out)], capsys)
    (out / "synset").rename(out / "synset.bak")  # pretend the run stopped after its checkpoint
    ckpt = out / "checkpoint.pt"
    torch.save({"iteration": 1}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:20])
    line = run_err(["distill", "--resume", "--out", str(out)], capsys)
    assert "checkpoint.pt" in line
    tally("corrupt artefact", "checkpoint (truncated)", injected=1, survived=1, clean_errors=1)


def test_a_corrupt_expert_buffer_is_refused_naming_the_file(tmp_path, data_env, capsys):
    out = tmp_path / "buffer"
    run_ok(["buffers", "--dataset", "mnist", "--out", str(out), "--experts", "1", "--epochs", "2", "--model",
            "convnet_w8", "--batch", "8"], capsys)
    expert = next(out.glob("expert_*.safetensors"))
    _flip_a_byte(expert)
    line = run_err(["distill", "--method", "mtt", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke",
                    "--set", f"buffer={out}", "--set", "model=convnet_w8", "--out", str(tmp_path / "mtt")], capsys)
    assert expert.name in line
    tally("corrupt artefact", "expert buffer (bit flip)", injected=1, survived=1, clean_errors=1)


def test_corrupt_model_weights_are_refused_by_their_checksum(tmp_path):
    from gendistill.generative.hub import verify_checksums, write_checksums
    from gendistill.utils.errors import CheckpointError

    folder = tmp_path / "model" / "transformer"
    folder.mkdir(parents=True)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    write_checksums(tmp_path / "model")
    verify_checksums(tmp_path / "model")
    _flip_a_byte(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors does not match its checksum"):
        verify_checksums(tmp_path / "model")
    tally("corrupt artefact", "model weights (bit flip)", injected=1, survived=1, clean_errors=1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_shipped_model_is_refused_naming_the_file(tmp_path, monkeypatch, damage):
    """The generators shipped in the package (not a freshly saved model): a damaged weight file is refused by the
    checksum its folder ships with, before any weight is read."""
    import shutil

    from gendistill.generative import hub
    from gendistill.utils.errors import CheckpointError

    copy = tmp_path / "pretrained"
    shutil.copytree(hub.shipped_root(), copy)
    monkeypatch.setattr(hub, "shipped_root", lambda: copy)
    assert hub.resolve_model_source("gendistill/dit-mnist") == str(copy / "dit-mnist")  # intact: accepted
    weights = copy / "dit-mnist" / "transformer" / "diffusion_pytorch_model.safetensors"
    if damage == "flip":
        _flip_a_byte(weights, offset=len(weights.read_bytes()) // 2)
    else:
        weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors does not match its checksum"):
        hub.resolve_model_source("gendistill/dit-mnist")
    tally("corrupt artefact", f"shipped model weights ({'bit flip' if damage == 'flip' else 'truncated'})",
          injected=1, survived=1, clean_errors=1)


def test_a_result_recorded_under_another_protocol_is_redone_not_reported(tmp_path, data_env):
    from gendistill.bench.runner import collect_cells, run_bench
    from gendistill.bench.spec import parse_spec

    spec = parse_spec({"name": "p", "methods": ["random"], "datasets": ["mnist"], "ipc": [1], "protocols": ["dc"],
                       "eval_models": ["convnet_w8"], "runs": 1, "epochs": 1, "quality": False})
    out = tmp_path / "b"
    run_bench(spec, out, data_root=str(data_env), progress=False, leaderboard=False)
    record_path = next((out / "runs").glob("*/eval/dc__convnet_w8.json"))
    record = json.loads(record_path.read_text())
    record["protocol"]["name"] = "dsa"  # a stale or hand-edited file: not the dc evaluation it claims to be
    record["mean"] = 99.9
    record_path.write_text(json.dumps(record))
    assert collect_cells(spec, out)[0]["status"] == "pending"  # never shown as the cell's result
    cells = run_bench(spec, out, data_root=str(data_env), progress=False, leaderboard=False)
    assert cells[0]["status"] == "done" and cells[0]["result"]["protocol"]["name"] == "dc"
    assert cells[0]["result"]["mean"] != 99.9
    (out / "cells.json").write_text("{not json")  # a corrupt cells.json is rewritten from the run folders
    from gendistill.cli import main

    assert main(["--quiet", "leaderboard", str(out)]) == 0
    assert json.loads((out / "cells.json").read_text())[0]["status"] == "done"
    tally("corrupt artefact", "result JSON under another protocol", injected=1, survived=1)
    tally("corrupt artefact", "cells.json (not JSON)", injected=1, survived=1)


# ---------------------------------------------------------------------------------------- no code from data
def test_no_file_is_loaded_with_pickle_outside_the_documented_trust_pickle_path():
    """Every ``torch.load`` passes ``weights_only`` (``True``, or ``not trust_pickle`` in the documented importer),
    every ``np.load`` passes ``allow_pickle=False``, and nothing calls ``pickle.load`` except the CIFAR reader's
    restricted unpickler."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*(root / "gendistill").rglob("*.py"), *(root / "baselines").rglob("*.py")]:
        if "gendistill/baselines" in path.as_posix():
            continue  # the symbolic link to baselines/, scanned once
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            call = m.group(0)
            if "weights_only=True" not in call and "weights_only=not trust_pickle" not in call:
                offenders.append(f"{path.relative_to(root)}: {call[:80]}")
        for m in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            if "allow_pickle=False" not in m.group(0):
                offenders.append(f"{path.relative_to(root)}: {m.group(0)[:80]}")
        for m in re.finditer(r"pickle\.loads?\(", text):
            if path.name != "datasets.py":
                offenders.append(f"{path.relative_to(root)}: {m.group(0)}")
    assert not offenders, offenders
