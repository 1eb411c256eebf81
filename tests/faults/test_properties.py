"""Property-based tests (hypothesis): every malformed YAML config, ``--set`` value or bench spec raises the package's
error type with a one-line message - never another exception, never a silently accepted value."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.report import tally
from gendistill.bench.spec import parse_spec
from gendistill.registry import get_method
from gendistill.utils.config import from_dict, load_config, parse_overrides, read_yaml
from gendistill.utils.errors import GendistillError

pytestmark = pytest.mark.faults
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
DM = get_method("dm").config_cls
FIELDS = [f for f in DM.__dataclass_fields__]


def one_line(exc: BaseException) -> bool:
    text = str(exc)
    return bool(text.strip()) and "\n" not in text


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), values, max_size=4))
def test_config_mappings_build_or_fail_in_one_line(data):
    try:
        config = from_dict(DM, data)
    except GendistillError as exc:
        assert one_line(exc)
        tally("bad input", "config mappings", inputs=1, clean_errors=1)
        return
    tally("bad input", "config mappings", inputs=1)
    for key in data:  # accepted: every given key is a field and holds a value of its type
        assert key in FIELDS
        assert type(getattr(config, key)) in (int, float, bool, str, tuple, list, dict, type(None))


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=4))
def test_set_overrides_parse_or_fail_in_one_line(items):
    try:
        overrides = parse_overrides(items)
        load_config(DM, overrides=items)
    except GendistillError as exc:
        assert one_line(exc)
        tally("bad input", "--set values", inputs=1, clean_errors=1)
        return
    tally("bad input", "--set values", inputs=1)
    assert isinstance(overrides, dict)


@SETTINGS
@given(st.text(max_size=200))
def test_yaml_files_read_or_fail_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text)
    try:
        data = read_yaml(path)
        load_config(DM, data)
    except GendistillError as exc:
        assert one_line(exc)
        tally("bad input", "YAML files", inputs=1, clean_errors=1)
        return
    tally("bad input", "YAML files", inputs=1)


spec_values = st.one_of(values, st.lists(st.sampled_from(["random", "dm", "mnist", 1, 10, "dsa", "convnet"]),
                                         max_size=3))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["methods", "datasets", "ipc", "protocols", "eval_models", "runs", "epochs",
                                         "distill_seeds", "sample_seeds", "name", "eval_ipc", "bogus"]),
                       spec_values, max_size=6))
def test_bench_specs_parse_or_fail_in_one_line(data):
    try:
        spec = parse_spec(data, "spec")
    except GendistillError as exc:
        assert one_line(exc)
        tally("bad input", "bench specs", inputs=1, clean_errors=1)
        return
    tally("bad input", "bench specs", inputs=1)
    assert spec.methods and spec.datasets and spec.ipc
