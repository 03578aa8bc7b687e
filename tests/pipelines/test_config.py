import pytest

from pipelines.train.config import TrainConfig
from training.errors import ConfigError


def test_yaml_and_flags_merge(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: a.csv\nname: m\nkind: ae\nmodel:\n  latent_dim: 3\n  beta: 2.0\n")
    flags = {"kind": "vae", "name": None, "model": {"latent_dim": 5, "dropout": None}}
    cfg = TrainConfig.from_sources(str(cfg_file), flags)
    assert (cfg.data, cfg.name, cfg.kind) == ("a.csv", "m", "vae")
    p = cfg.detector_params()
    assert (p.latent_dim, p.beta, p.kind, p.primary_score) == (5, 2.0, "vae", "combined")


def test_unknown_keys_are_named(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: a.csv\nname: m\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key\(s\) \['learning_rat'\]"):
        TrainConfig.from_sources(str(cfg_file), {})
    cfg_file.write_text("data: a.csv\nname: m\nmodel:\n  latnt_dim: 3\n")
    with pytest.raises(ConfigError, match=r"model.unknown detector parameter.*'latnt_dim'"):
        TrainConfig.from_sources(str(cfg_file), {})


def test_invalid_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="name: required"):
        TrainConfig.from_sources(None, {"data": "a.csv"})
    with pytest.raises(ConfigError, match="target_fpr"):
        TrainConfig.from_sources(None, {"data": "a.csv", "name": "m", "target_fpr": 2.0})
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_sources(str(tmp_path / "nope.yaml"), {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_sources(str(bad), {})


def test_numpy_values_are_shown_as_plain_values():
    import numpy as np

    with pytest.raises(ConfigError) as info:
        TrainConfig(data="x.csv", name="m", calibration_fraction=np.float64(np.inf))
    assert str(info.value) == "calibration_fraction: expected a number in (0, 0.9), got inf"


def test_top_level_values_are_typed(tmp_path):
    cfg = tmp_path / "c.yaml"
    for text, message in (("data: [1, 2]\nname: m\n", "data: expected text, got [1, 2]"),
                          ("data: d.csv\nname: m\nnormal_class: [3]\n",
                           "normal_class: expected a class name or number, got [3]"),
                          ("data: d.csv\nname: m\nseed: -1\n", "seed: expected a whole number"),
                          ("data: d.csv\nname: m\nalias: v3\n", "alias: 'v3' is reserved"),
                          ("data: d.csv\nname: m\nlabel_column: id\nid_column: id\n",
                           "label_column and id_column both name 'id'"),
                          ("data: d.csv\nname: m\nexperiment:\n",
                           "experiment: required, and not blank")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig.from_sources(str(cfg), {})


def test_python_values_of_the_right_kind_are_taken(tmp_path):
    import numpy as np

    cfg = TrainConfig(data=tmp_path / "d.csv", name="m", seed=np.int64(3))
    assert cfg.data == str(tmp_path / "d.csv") and cfg.seed == 3 and type(cfg.seed) is int


def test_a_key_given_twice_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: a.csv\nname: m\nmodel:\n  latent_dim: 2\n  latent_dim: 3\n")
    with pytest.raises(ConfigError, match="key 'latent_dim' appears twice \\(line 5\\)"):
        TrainConfig.from_sources(str(cfg), {})
