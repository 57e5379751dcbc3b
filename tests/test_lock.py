"""An output folder is locked against a second writer; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saekit.errors import SaekitError
from saekit.lock import LOCK_NAME, output_lock

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom saekit.lock import output_lock\n"
        f"with output_lock({str(tmp_path / 'out')!r}, 'test'):\n    print('locked', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SaekitError, match=f"pid {holder.pid}"):
            with output_lock(tmp_path / "out", "second"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # killed while holding it: the kernel dropped the flock, the next writer takes the folder over
    assert (tmp_path / "out" / LOCK_NAME).is_file()
    with output_lock(tmp_path / "out", "third"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_stale_lock_file_naming_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / "out").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "command": "saekit train"}))
    with output_lock(tmp_path / "out", "train"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_and_a_failed_command_leaves_no_empty_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "new", "a"), output_lock(tmp_path / "new", "a"):
            raise RuntimeError
    assert not (tmp_path / "new").exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaekitError, match="existing file"):
        with output_lock(tmp_path / "f", "a"):
            pass
    assert (tmp_path / "f").read_text() == "x"


def _train(out: Path, steps: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saekit", "train", "--sae.architecture", "relu", "--sae.n-latents", "16",
                             "--data.synthetic.n-features", "8", "--data.synthetic.d", "4", "--steps", str(steps),
                             "--batch-size", "32", "--ckpt-every", "0", "--no-progress", "--out-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_two_trains_into_one_folder_one_is_refused_the_other_intact(tmp_path):
    out = tmp_path / "run"
    first = _train(out, 3000)
    deadline = time.time() + 120
    while not (out / LOCK_NAME).is_file() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = _train(out, 5)
    o2, e2 = second.communicate(timeout=300)
    o1, e1 = first.communicate(timeout=600)
    assert first.returncode == 0, e1
    assert second.returncode == 2 and "saved" not in o2
    assert e2.count("saekit: error:") == 1 and f"pid {first.pid}" in e2, e2
    from saekit import load
    from saekit.config import load_train_config

    assert load_train_config(out / "config.yaml").steps == 3000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3000
    assert load(out / "sae").cfg.n_latents == 16
    assert not (out / LOCK_NAME).exists()
