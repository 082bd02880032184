"""The config parsers accept or raise UserError, never anything else."""
import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from largebatch.training.config import Config, parse_config
from largebatch.errors import UserError

FIELDS = [f.name for f in dataclasses.fields(Config)]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(), max_size=3))
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f.replace("_", "-") for f in FIELDS]), st.text(max_size=8))


def _accepts_or_user_error(argv):
    try:
        cfg = parse_config(argv)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert cfg.global_batch > 0 and cfg.micro_batch > 0 and cfg.epochs > 0
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, values, max_size=6))
def test_yaml_mappings(tmp_path, mapping):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mapping))
    _accepts_or_user_error(["--config", str(path)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_yaml_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _accepts_or_user_error(["--config", str(path)])


flags = st.sampled_from([f"--{f.replace('_', '-')}" for f in FIELDS] + ["--nope", "-x", "--config"])
tokens = st.one_of(flags, st.integers(-5, 10**5).map(str), st.floats().map(str), st.text(max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=8))
def test_command_lines(argv):
    _accepts_or_user_error(argv)


def test_good_yaml_and_flag_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("global-batch: 1024\nmicro_batch: 128\nwarmup: constant\nepochs: 30\n")
    cfg = parse_config(["--config", str(path), "--micro-batch", "64"], epochs=12)
    assert (cfg.global_batch, cfg.micro_batch, cfg.warmup, cfg.epochs) == (1024, 64, "constant", 30.0)
