import dataclasses

import pytest

from gendistill.utils.config import load_config, parse_overrides
from gendistill.utils.errors import ConfigError


@dataclasses.dataclass
class Inner:
    epochs: int = 10
    lr: float = 0.1


@dataclasses.dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    maybe: float | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: fromfile\ninner:\n  epochs: 5\n")
    cfg = load_config(Outer, {"flag": True}, f, overrides=["inner.lr=0.5", "sizes=[3, 4]", "maybe=2"])
    assert cfg == Outer(name="fromfile", flag=True, sizes=(3, 4), maybe=2.0, inner=Inner(epochs=5, lr=0.5))


def test_unknown_key_is_one_line_error_naming_valid_keys():
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, overrides=["epochz=3"])
    assert "epochz" in str(exc.value) and "valid keys" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="inner.bogus"):
        load_config(Outer, {"inner": {"bogus": 1}})


@pytest.mark.parametrize("override", ["flag=maybe", "inner.epochs=1.5", "sizes=3", "inner=4"])
def test_wrong_types_rejected(override):
    with pytest.raises(ConfigError):
        load_config(Outer, overrides=[override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["nokey"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_extends_merges_the_parent_file_under_the_child(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text("name: root\nflag: true\ninner:\n  epochs: 7\n  lr: 0.3\n")
    (tmp_path / "mid.yaml").write_text("extends: base/root.yaml\ninner:\n  lr: 0.2\n")
    (tmp_path / "leaf.yaml").write_text("extends: mid.yaml\nname: leaf\n")
    cfg = load_config(Outer, tmp_path / "leaf.yaml", overrides=["inner.epochs=9"])
    assert cfg == Outer(name="leaf", flag=True, inner=Inner(epochs=9, lr=0.2))


@pytest.mark.parametrize("text, match", [("extends: nothere.yaml\n", "does not exist"),
                                         ("extends: a.yaml\n", "cycle"), ("extends: 3\n", "must name")])
def test_extends_errors_are_one_line(tmp_path, text, match):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(Outer, tmp_path / "a.yaml")
    assert "\n" not in str(exc.value)


def test_mnist_cpu_presets_change_only_the_guidance():
    """MNIST's `cpu` preset of dit/minimax is cpu.yaml at guidance 1 (measured); Fashion-MNIST keeps guidance 4."""
    from gendistill.presets import resolve_config

    for method in ("dit", "minimax"):
        mnist = dataclasses.asdict(resolve_config(method, "mnist", 10, preset="cpu"))
        fashion = dataclasses.asdict(resolve_config(method, "fashion_mnist", 10, preset="cpu"))
        assert (mnist.pop("cfg_scale"), fashion.pop("cfg_scale")) == (1.0, 4.0)
        assert mnist == fashion
