"""The YAML presets ship inside the package: packaged lookup, ``$GENDISTILL_CONFIGS`` overlays, a built wheel."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gendistill.presets import config_root, config_roots, preset_file, resolve_config
from gendistill.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_presets_resolve_from_the_top_level_configs_folder():
    """The editable install reads the repository's configs/ itself (edits apply at once), as gendistill.configs."""
    packaged = REPO / "configs"
    assert config_root().resolve() == packaged and config_roots() == [config_root()]
    assert preset_file("dm", "mnist", 10, None).resolve() == packaged / "dm" / "mnist_ipc10.yaml"
    assert resolve_config("dm", "mnist", 10).iterations == 20000
    assert preset_file("dm", "mnist", 10, "cpu").resolve() == packaged / "dm" / "cpu.yaml"
    assert resolve_config("dm", "mnist", 10, preset="cpu").iterations == 300
    assert not (REPO / "gendistill" / "configs").exists()  # one copy only, no second one to drift


def test_user_folders_override_and_extend_the_packaged_presets(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "dm").mkdir(parents=True)
    (second / "dm").mkdir(parents=True)
    (first / "dm" / "cpu.yaml").write_text("iterations: 7\n")
    (second / "dm" / "cpu.yaml").write_text("iterations: 8\n")
    (second / "dm" / "mine.yaml").write_text("iterations: 11\nbatch_real: 16\n")
    monkeypatch.setenv("GENDISTILL_CONFIGS", os.pathsep.join([str(first), "", str(second)]))
    assert config_roots() == [first, second, config_root()]

    assert resolve_config("dm", "mnist", 10, preset="cpu").iterations == 7  # the first folder wins
    mine = resolve_config("dm", "mnist", 10, preset="mine")  # only in a user folder
    assert (mine.iterations, mine.batch_real) == (11, 16)
    assert resolve_config("dm", "mnist", 10).iterations == 20000  # packaged presets still resolve
    assert resolve_config("dc", "mnist", 10, preset="cpu").iterations < 1000

    with pytest.raises(ConfigError, match="no preset 'nope' for dm") as info:
        preset_file("dm", "mnist", 10, "nope")
    message = str(info.value)
    assert "\n" not in message
    assert all(str(root / "dm") in message for root in (first, second, config_root()))
    assert "cpu" in message and "mine" in message and "mnist_ipc10" in message


def _copy_sources(dst: Path) -> Path:
    """The repository without VCS data, virtualenvs, results and build leftovers (the build runs there, so the
    working tree gets no ``build/`` or egg-info and a stale ``build/lib`` cannot leak into the wheel)."""
    top_level = {".git", ".venv", "venv", "build", "dist", "runs", "results", ".whl", ".gl"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in ("__pycache__", ".pytest_cache", ".ruff_cache") or n.endswith(".egg-info")}
        if Path(folder).resolve() == REPO:
            skip |= top_level & set(names)
        return skip

    return Path(shutil.copytree(REPO, dst, ignore=ignore, symlinks=True))


def _preset_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def test_wheel_ships_the_presets(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: cannot build a wheel without build isolation")
    src = _copy_sources(tmp_path / "src")
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _pip_env()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-w", str(dist)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        log = build.stdout + build.stderr
        if any(m in log for m in ("No module named 'setuptools'", "No module named 'wheel'",
                                  "invalid command 'bdist_wheel'")):
            pytest.skip(f"cannot build a wheel here (setuptools/wheel missing): {log.strip().splitlines()[-1]}")
        pytest.fail(f"pip wheel failed:\n{log}")
    (wheel,) = dist.glob("gendistill-*.whl")

    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(site), str(wheel)], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    shipped = [f for f in _preset_files(site / "gendistill" / "configs") if not f.endswith((".pyc", "__init__.py"))]
    assert shipped == [f for f in _preset_files(REPO / "configs") if not f.endswith((".pyc", "__init__.py"))]
    assert (site / "gendistill" / "baselines" / "dm.py").is_file()  # the top-level baselines/, as gendistill.baselines
    assert (site / "gendistill" / "baselines" / "trajectory" / "mtt.py").is_file()
    assert not (site / "baselines").exists()  # no top-level `baselines` package to collide with another one

    check = textwrap.dedent(f"""
        from pathlib import Path
        import gendistill
        from gendistill.presets import preset_file, resolve_config
        from gendistill.registry import get_method

        site = Path({str(site)!r}).resolve()
        assert Path(gendistill.__file__).resolve().is_relative_to(site), gendistill.__file__
        assert resolve_config("dm", "mnist", 10).iterations == 20000
        assert preset_file("cafe", "mnist", 10, "cpu").resolve().is_relative_to(site)
        assert resolve_config("cafe", "mnist", 10, preset="cpu").iterations == 4
        assert Path(get_method("dm").cls.__module__ and __import__("gendistill.baselines.dm").__file__).resolve()
        import gendistill.baselines.dm as dm
        assert Path(dm.__file__).resolve().is_relative_to(site), dm.__file__
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", check], env={**env, "PYTHONPATH": str(site)}, cwd=elsewhere,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
