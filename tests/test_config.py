import dataclasses
import subprocess
import sys

import pytest

from saekit.config import SAEConfig, TrainConfig, dump_yaml, load_train_config
from saekit.errors import SaekitError


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(sae=SAEConfig(architecture="gated", l1_coeff=2.5), steps=7)
    again = load_train_config(write(tmp_path, dump_yaml(cfg)))
    assert again.steps == 7 and again.sae.architecture == "gated" and again.sae.l1_coeff == 2.5


def test_sae_config_dict_has_architecture_and_its_own_fields_only():
    d = SAEConfig(architecture="topk", d_in=4, n_latents=8, k=2).to_dict()
    assert d["architecture"] == "topk" and d["k"] == 2 and "l1_coeff" not in d
    assert SAEConfig.from_dict(d) == SAEConfig(architecture="topk", d_in=4, n_latents=8, k=2)


@pytest.mark.parametrize("text,message", [
    ("stepz: 3\n", "unknown field"),
    ("steps: many\n", "should be int"),
    ("sae: {architecture: topk, bogus: 1}\n", "unknown field"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("steps: [\n", "not valid YAML"),
])
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(SaekitError, match=message):
        load_train_config(write(tmp_path, text))


@pytest.mark.parametrize("changes,message", [
    (dict(architecture="topk", k=100), "sae.k"),
    (dict(architecture="relu", l1_coeff=-1.0), "l1_coeff"),
    (dict(architecture="nope"), "unknown architecture"),
])
def test_impossible_sae_values(changes, message):
    with pytest.raises(SaekitError, match=message):
        dataclasses.replace(SAEConfig(n_latents=10), **changes).resolved(4)


def test_d_in_mismatch_between_data_and_sae():
    with pytest.raises(SaekitError, match="does not match"):
        SAEConfig(d_in=8).resolved(4)


@pytest.mark.parametrize("changes", [dict(lr=-1.0), dict(steps=0), dict(decay_fraction=2.0), dict(adam_beta1=1.0)])
def test_impossible_train_values(changes):
    with pytest.raises(SaekitError):
        dataclasses.replace(TrainConfig(), **changes).validate()


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "saekit", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_help_documents_fields():
    out = run_cli("train", "--help")
    assert out.returncode == 0
    for text in ["--steps", "--sae.architecture", "--sae.l1-coeff", "--sae.k", "Peak Adam learning rate",
                 "--data.synthetic.n-features", "--resume", "--config"]:
        assert text in out.stdout, text


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path):
    out = run_cli("train", "--config", str(write(tmp_path, "stepz: 3\n")))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown field" in out.stderr and "Traceback" not in out.stderr


def test_cli_impossible_value_is_one_line(tmp_path):
    out = run_cli("train", "--sae.architecture", "topk", "--sae.k", "999", "--sae.n-latents", "8",
                  "--out-dir", str(tmp_path / "r"), "--no-progress")
    assert out.returncode == 2 and "sae.k" in out.stderr and "Traceback" not in out.stderr


def test_cli_config_file_with_overrides(tmp_path):
    cfg = write(tmp_path, "steps: 3\nbatch_size: 64\nprogress: false\nsae: {architecture: relu}\n"
                          "data: {synthetic: {n_features: 8, d: 4, k: 2}}\n")
    out = run_cli("train", "--config", str(cfg), "--steps", "5", "--out-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    saved = load_train_config(tmp_path / "r" / "config.yaml")
    assert saved.steps == 5 and saved.sae.architecture == "relu" and saved.sae.d_in == 4
    info = run_cli("info", str(tmp_path / "r" / "sae"))
    assert info.returncode == 0 and "relu" in info.stdout


def test_cli_missing_sae_folder():
    out = run_cli("info", "/nonexistent/sae")
    assert out.returncode == 2 and "no SAE folder" in out.stderr


def test_atomic_writes_use_ordinary_file_permissions(tmp_path):
    import os

    from saekit.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "hi")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
