"""The README's Python example for one's own activations runs as written, and its SAE evaluates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import saekit

README = Path(__file__).resolve().parents[1] / "README.md"


def own_activations_example() -> str:
    text = README.read_text()
    section = text.split("### Training on your own activations", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_and_its_sae_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(own_activations_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[8, 8, 8, 8]")
    run = tmp_path / "runs" / "mine"
    assert (run / "sae" / "cfg.json").is_file() and (run / "heldout.safetensors").is_file()
    out = subprocess.run([sys.executable, "-m", "saekit", "eval", str(run / "sae")], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fvu" in out.stdout
    assert saekit.load(run / "sae").cfg.n_latents == 128
