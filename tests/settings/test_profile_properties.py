"""Property tests of profile parsing: any well-typed override is applied exactly; any ill-typed
or unknown one is a one-line ProfileError naming the file and the line."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.settings import ProfileError, load_profile

DEFAULT = load_profile("default")
NUMERIC = [(analyzer, key) for analyzer, table in DEFAULT.thresholds.items() for key, value in table.items()
           if isinstance(value, int | float) and not isinstance(value, bool)]


def write(text: str) -> Path:
    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    handle.write(text)
    handle.close()
    return Path(handle.name)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NUMERIC), st.floats(0.001, 1000.0, allow_nan=False))
def test_numeric_threshold_overrides_are_applied_exactly(entry, value):
    analyzer, key = entry
    if isinstance(DEFAULT.thresholds[analyzer][key], int):  # integer thresholds take integers only
        value = int(value) + 1
    path = write(f"[thresholds.{analyzer}]\n{key} = {value!r}\n")
    profile = load_profile(path)
    assert profile.thresholds[analyzer][key] == value
    assert profile.threshold_sources[analyzer][key] == f"overridden in {path}"
    others = {k: v for k, v in profile.thresholds[analyzer].items() if k != key}
    assert others == {k: v for k, v in DEFAULT.thresholds[analyzer].items() if k != key}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NUMERIC), st.sampled_from(['"high"', "true", "[1, 2]", "{ a = 1 }"]))
def test_ill_typed_threshold_overrides_are_refused_with_file_and_line(entry, value):
    analyzer, key = entry
    path = write(f"# a comment\n[thresholds.{analyzer}]\n{key} = {value}\n")
    try:
        load_profile(path)
    except ProfileError as error:
        message = str(error)
        assert message.startswith(f"{path}:3") and "\n" not in message and key in message
    else:
        raise AssertionError(f"{key} = {value} was accepted")


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_unknown_probe_keys_are_refused(key):
    if key in DEFAULT.probes:
        return
    path = write(f"[probes]\n{key} = 1\n")
    try:
        load_profile(path)
    except ProfileError as error:
        assert str(error).startswith(f"{path}:2") and repr(key) in str(error)
    else:
        raise AssertionError(f"unknown key {key} was accepted")


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_is_a_profile_or_a_profile_error(text):
    path = write(text)
    try:
        load_profile(path)
    except ProfileError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)


def test_a_float_for_an_integer_threshold_is_refused():
    path = write("[thresholds.attention_saturation]\nskip_positions = 1.5\n")
    try:
        load_profile(path)
    except ProfileError as error:
        assert str(error) == f"{path}:2: [thresholds.attention_saturation] skip_positions must be an integer"
    else:
        raise AssertionError("accepted")
