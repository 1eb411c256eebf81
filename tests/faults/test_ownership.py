"""Ownership: one writer per run folder (a second is refused, naming the holder), stale locks taken over, and N bench
processes on one spec and folder splitting the matrix without computing a cell twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from faults.report import tally
from gendistill.cli import main
from gendistill.utils.locks import FolderLockedError, folder_lock, lock_paths


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    with folder_lock(out):
        code = main(["--quiet", "distill", "--method", "random", "--dataset", "mnist", "--ipc", "1",
                     "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "is being written by pid" in err[0] and str(os.getpid()) in err[0] and "since" in err[0]
    tally("ownership", "second writer on a locked run folder", injected=1, survived=1, clean_errors=1)
    with folder_lock(out):  # released: the same process (or another) may take it again
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "held"
    code = textwrap.dedent(f"""
        import time
        from gendistill.utils.locks import folder_lock
        with folder_lock({str(folder)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"), folder_lock(folder):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert lock_paths(folder)[1].is_file()  # its holder record is still there...
        with folder_lock(folder, wait=5):  # ...but the OS released the lock: taken over
            assert json.loads(lock_paths(folder)[1].read_text())["pid"] == os.getpid()
        tally("ownership", "lock of a killed process taken over", injected=1, survived=1)
    finally:
        proc.kill()


def test_two_bench_processes_share_the_matrix_and_never_compute_a_cell_twice(tmp_path, data_env):
    spec = {"name": "shared", "methods": ["random", "kmeans", {"name": "dm", "set": ["iterations=2", "batch_real=4",
                                                                                      "model=convnet_w8"]}],
            "datasets": ["mnist"], "ipc": [1, 2], "protocols": ["dc"], "eval_models": ["convnet_w8"], "runs": 1,
            "epochs": 1, "quality": False}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "gendistill.cli", "--quiet", "bench", str(tmp_path / "spec.yaml"), "--out", str(out),
           "--data-root", str(data_env)]
    env = {**os.environ, "GENDISTILL_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    distilled = [e["cell"] for e in events if e["event"] == "distill"]
    assert sorted(distilled) == sorted(set(distilled)) and len(distilled) == 6  # each cell once
    assert len({e["pid"] for e in events}) == 2  # both processes did work
    cells = json.loads((out / "cells.json").read_text())
    assert all(c["status"] == "done" for c in cells)
    tally("ownership", "two bench processes on one folder (cells computed once)", injected=1, survived=1,
          identical=1)
