"""Fuzz asr.config.load_experiment_config: any bytes or mutated YAML give a config or a ConfigError.

Run longer by hand with ``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_fuzz_config.py``.
"""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.config import SECTIONS, ExperimentConfig, load_experiment_config
from asr.errors import ConfigError

settings.register_profile("fast", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("ASR_FUZZ_EXAMPLES", "5000")), deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = settings.get_profile("long" if "ASR_FUZZ_EXAMPLES" in os.environ
                               else os.environ.get("HYPOTHESIS_PROFILE", "fast"))

VALID = ExperimentConfig.default().to_yaml().encode()
FIELDS = [(s, k) for s in SECTIONS for k in ExperimentConfig.default().to_sections()[s]]


def _load(tmp_path, data: bytes):
    path = tmp_path / "conf.yaml"
    path.write_bytes(data)
    try:
        cfg = load_experiment_config(path)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(path)), msg
        return e
    assert isinstance(cfg, ExperimentConfig)
    return cfg


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"[", b"{", b": ", b"\n  ", b"- ", b"!!python/object ", b"&a ",
                                                  b"*a", b".nan", b"1e999", b"'", b"\t", b"\xff", b"~"]))
        else:
            del data[pos:]
    return bytes(data)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))


@st.composite
def value_swaps(draw) -> tuple[str, str, object]:
    section, key = draw(st.sampled_from(FIELDS))
    return section, key, draw(scalars)


@settings(PROFILE)
@given(st.binary(max_size=400))
def test_random_bytes(tmp_path, data):
    _load(tmp_path, data)


@settings(PROFILE)
@given(mutated())
def test_mutated_yaml(tmp_path, data):
    _load(tmp_path, data)


@settings(PROFILE)
@given(value_swaps())
def test_wrong_values_name_the_key(tmp_path, swap):
    section, key, value = swap
    sections = ExperimentConfig.default().to_sections()
    sections[section][key] = value
    out = _load(tmp_path, yaml.safe_dump(sections).encode())
    if isinstance(out, ConfigError):
        # Either the type check or the dataclass's own validation: both must name the key that changed.
        assert key in str(out), str(out)


@pytest.mark.parametrize("text, key", [
    ("train:\n  learning_rate: 0.1\n", "learning_rate"),
    ("model:\n  listener_hidden: many\n", "listener_hidden"),
    ("decoder:\n  beam: 3\n", "decoder"),
    ("train:\n  lr: [1, 2]\n", "train.lr"),
    ("train:\n  lr_schedule: linear\n", "lr_schedule"),
])
def test_messages_name_the_key(tmp_path, text, key):
    out = _load(tmp_path, text.encode())
    assert isinstance(out, ConfigError) and key in str(out)


def test_deep_nesting_is_a_config_error(tmp_path):
    assert isinstance(_load(tmp_path, b"[" * 5000 + b"]" * 5000), ConfigError)
