import subprocess
import sys


def test_synthetic_demo_prints_results_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "saekit", "demo", "--mode", "synthetic", "--steps", "60",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(l for l in lines if l.startswith("architecture"))
    assert all(col in header for col in ["L0", "FVU", "gamma", "dict MCC"])
    assert {l.split()[0] for l in lines[lines.index(header) + 2:]} == {"relu", "gated", "topk"}
    assert (tmp_path / "gated" / "sae" / "model.safetensors").is_file()
