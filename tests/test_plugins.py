"""Methods are plugins: declared as entry points, loaded loudly, and a new one needs one file plus its presets.

The tests build real distributions on ``sys.path`` (a ``*.dist-info`` with ``entry_points.txt`` beside a module),
which ``importlib.metadata`` finds as it finds an installed package.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli import run_err, run_ok

import gendistill
from gendistill.cli.main import build_parser
from gendistill.evaluation import protocols
from gendistill.registry import _METHODS, list_methods
from gendistill.utils import plugins
from gendistill.utils.errors import PluginError


def _distribution(root: Path, name: str, methods: dict[str, str]) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gendistill.methods]\n" + "".join(f"{k} = {v}\n" for k, v in
                                                                             methods.items()))


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    """A folder on ``sys.path``; everything a test's plugin registers is removed afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = (set(_METHODS), set(protocols.PROTOCOLS), set(protocols._METHOD_DEFAULTS), set(plugins._loaded))
    yield root
    for table, keep in zip((_METHODS, protocols.PROTOCOLS, protocols._METHOD_DEFAULTS, plugins._loaded), before,
                           strict=True):
        for key in set(table) - keep:
            del table[key]
    for name, module in list(sys.modules.items()):  # the test's own modules only
        if str(getattr(module, "__file__", "") or "").startswith(str(root)):
            del sys.modules[name]


def test_a_method_module_that_fails_to_import_is_an_error_naming_it(plugin_root, capsys):
    (plugin_root / "broken_method.py").write_text("import no_such_dependency_xyz\n")
    _distribution(plugin_root, "broken_pkg", {"broken": "broken_method"})
    with pytest.raises(PluginError, match=r"method module broken_method \(methods: broken\) failed to import "
                                          r"\(ModuleNotFoundError: No module named 'no_such_dependency_xyz'\)"):
        list_methods()
    line = run_err(["methods"], capsys)  # the CLI says so in one line, it does not list the others
    assert "broken_method" in line and "no_such_dependency_xyz" in line


def test_a_declared_name_the_module_does_not_register_is_an_error(plugin_root):
    (plugin_root / "quiet_method.py").write_text("X = 1\n")
    _distribution(plugin_root, "quiet_pkg", {"quiet": "quiet_method"})
    with pytest.raises(PluginError, match="quiet_method is declared for method 'quiet' but registers no such"):
        list_methods()


def test_no_declared_methods_means_gendistill_is_not_installed(monkeypatch):
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(PluginError, match="install it"):
        plugins.load_plugins()


THROWAWAY = '''
"""A throwaway method: the first images of each class, scaled (exists only in a test)."""
import dataclasses
from pathlib import Path

import torch

from gendistill.distiller import BaseConfig, Distiller, budget_field
from gendistill.registry import register_method


@dataclasses.dataclass
class ThrowawayConfig(BaseConfig):
    """Attributes:
        scale: factor on the chosen images.
        iterations: pretend budget.
    """

    scale: float = 1.0
    iterations: int = budget_field(10)


@register_method("throwaway", config=ThrowawayConfig, paper="nobody, 2026", year=2026, kind="pixel",
                 default_eval="dsa", presets=Path(__file__).parent / "throwaway_configs")
class Throwaway(Distiller):
    """First images per class, scaled."""

    def distill(self, train, ipc, *, seed=0, run=None, progress=None):
        idx = torch.cat([(train.labels == c).nonzero().squeeze(1)[:ipc] for c in range(train.num_classes)])
        return self.make_synset(train, train.images(idx) * self.config.scale, train.labels[idx], ipc, seed)
'''


def test_a_new_method_is_one_file_plus_its_presets(plugin_root, tmp_path, data_env, capsys):
    (plugin_root / "throwaway_method.py").write_text(textwrap.dedent(THROWAWAY))
    presets = plugin_root / "throwaway_configs" / "throwaway"
    presets.mkdir(parents=True)
    (presets / "smoke.yaml").write_text("scale: 0.5\niterations: 2\n")
    _distribution(plugin_root, "throwaway_pkg", {"throwaway": "throwaway_method"})

    assert "throwaway" in run_ok(["methods"], capsys)  # listed
    assert "scale: 0.5" in run_ok(["config", "throwaway", "--preset", "smoke"], capsys)  # configured
    run = tmp_path / "run"
    run_ok(["distill", "--method", "throwaway", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke",
            "--set", "iterations=1", "--out", str(run)], capsys)  # distilled
    meta = json.loads((run / "synset" / "synset.json").read_text())["meta"]
    assert meta["method"] == "throwaway" and meta["default_protocol"] == "dsa"
    assert meta["reduced_budget"] and "override iterations 1 < 2" in meta["budget_reductions"]  # its budget mark
    out = run_ok(["eval", "--synset", str(run), "--runs", "1", "--epochs", "1", "--model", "convnet_w8"], capsys)
    assert "protocol: dsa (default of method throwaway)" in out  # evaluated under its own protocol
    run_ok(["export", "--synset", str(run), "--out", str(tmp_path / "png")], capsys)  # exported
    assert len(list((tmp_path / "png").rglob("*.png"))) == 10


def test_the_cli_subcommands_and_the_public_api_are_pinned():
    parser, handlers = build_parser()
    assert set(handlers) == {"methods", "config", "datasets", "networks", "distill", "eval", "metrics", "export",
                             "import", "table", "bench", "leaderboard", "quickstart", "buffers", "pretrain",
                             "finetune", "sample", "models"}
    assert set(gendistill.__all__) == {
        "PROTOCOLS", "DatasetSplits", "Distiller", "EvalProtocol", "EvalResult", "GendistillError",
        "IterativeDistiller", "RealDataset", "SyntheticSet", "__version__", "create_network", "distill", "evaluate",
        "get_method", "get_protocol", "list_datasets", "list_methods", "list_networks", "load_dataset", "load_synset",
        "register_method"}
    for name in gendistill.__all__:
        assert getattr(gendistill, name) is not None
