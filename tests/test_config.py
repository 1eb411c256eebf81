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
