"""saekit's commands on SAELens- and sparsify-format folders made in the test, on a tiny LM's activations:
export -> eval, features, iterative inference (OMP) on the frozen dictionary; import; a plain SAELens
folder without any saekit keys; pickles refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit.cli import main
from saekit.config import DataConfig, LMConfig, SAEConfig, TrainConfig
from saekit.inference.pursuit import orthogonal_matching_pursuit
from saekit.interop import saelens


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, model_dir, corpus_dir):
    from saekit.train.trainer import train

    root = tmp_path_factory.mktemp("interop-lm")
    lm = LMConfig(model=str(model_dir), hookpoint="resid_post.0", corpus=str(corpus_dir), context_length=16,
                  eval_fraction=0.3, shuffle_buffer_tokens=128)
    cfg = TrainConfig(sae=SAEConfig(architecture="topk", n_latents=48, k=4), data=DataConfig(source="lm", lm=lm),
                      steps=4, batch_size=32, init_samples=64, progress=False, out_dir=str(root / "run"))
    sae = train(cfg)
    assert sae.cfg.input_scale != 1.0
    return root, sae


def run(argv, capsys):
    main(argv)
    return capsys.readouterr().out


def test_export_then_eval_features_and_omp_on_the_saelens_folder(lm_run, capsys):
    root, sae = lm_run
    run(["features", str(root / "run" / "sae"), "--n-contexts", "4", "--n-show", "2", "--n-examples", "2"], capsys)
    out = root / "saelens"
    printed = run(["export", str(root / "run" / "sae"), "--format", "saelens", "--out", str(out)], capsys)
    assert "input_scale" in printed and "sparsity.safetensors" in printed
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    freq = torch.tensor(json.loads((root / "run" / "features" / "features.json").read_text())["frequency"])
    torch.testing.assert_close(load_file(str(out / "sparsity.safetensors"))["sparsity"], torch.log10(freq + 1e-10))
    torch.testing.assert_close(saelens.read_frequency(out), freq, atol=1e-6, rtol=1e-4)

    # eval and features read the data the export recorded (no config.yaml beside this folder)
    printed = run(["eval", str(out), "--tokens", "128", "--splice-contexts", "3", "--out", str(root / "e.json")], capsys)
    report = json.loads((root / "e.json").read_text())
    ref = run(["eval", str(root / "run" / "sae"), "--tokens", "128", "--splice-contexts", "3", "--out",
               str(root / "e_ref.json")], capsys)
    ref_report = json.loads((root / "e_ref.json").read_text())
    assert "fvu" in printed and "fvu" in ref
    assert report["fvu"] == pytest.approx(ref_report["fvu"], rel=1e-4)
    assert report["splice"]["ce_sae"] == pytest.approx(ref_report["splice"]["ce_sae"], rel=1e-4)
    run(["features", str(out), "--n-contexts", "4", "--n-show", "2", "--n-examples", "2", "--out",
         str(root / "feat")], capsys)
    assert len(json.loads((root / "feat" / "features.json").read_text())["frequency"]) == 48

    # iterative inference on the exported folder's frozen dictionary
    loaded = saekit.load(out)
    x = torch.randn(20, 32) * 3
    codes = orthogonal_matching_pursuit(x * loaded.cfg.input_scale, loaded.W_dec.detach(), loaded.b_dec.detach(), k=4)
    assert (codes > 0).sum(1).max() <= 4
    err_omp = (loaded.decode(codes) - x).pow(2).sum()
    assert err_omp <= (x - loaded.b_dec.detach()).pow(2).sum()  # OMP's refit beats the bias alone


def test_plain_saelens_folder_with_data_flags(lm_run, tmp_path, model_dir, corpus_dir, capsys):
    """A SAELens v6 folder written by hand (SAELens's layout, no saekit keys) works with --data flags."""
    _, sae = lm_run
    g = torch.Generator().manual_seed(0)
    d, m = 32, 40
    folder = tmp_path / "plain"
    folder.mkdir()
    W_enc = torch.randn(d, m, generator=g) / d ** 0.5
    save_file({"W_enc": W_enc, "b_enc": 0.1 * torch.randn(m, generator=g), "W_dec": W_enc.T.contiguous(),
               "b_dec": torch.zeros(d)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": m, "dtype": "float32",
                                                 "device": "cpu", "apply_b_dec_to_input": True,
                                                 "normalize_activations": "none", "reshape_activations": "none",
                                                 "metadata": {"sae_lens_version": "6.5.0", "hook_name": "x"}}))
    flags = ["--data.source", "lm", "--data.lm.model", str(model_dir), "--data.lm.hookpoint",
             "resid_post.0", "--data.lm.corpus", str(corpus_dir), "--data.lm.context-length", "16",
             "--data.lm.eval-fraction", "0.3"]
    out = run(["eval", str(folder), "--tokens", "64", "--splice-contexts", "2", "--out", str(tmp_path / "e.json"),
               *flags], capsys)
    assert "loss" in out or "ce" in out
    run(["import", str(folder), "--out", str(tmp_path / "imported")], capsys)
    back = saekit.load(tmp_path / "imported")
    assert back.cfg.architecture == "relu" and back.cfg.input_scale == 1.0
    x = torch.randn(5, d)
    torch.testing.assert_close(back.encode(x), (x @ W_enc + load_file(str(folder / "sae_weights.safetensors"))["b_enc"]).relu())
    with pytest.raises(SystemExit) as e:
        main(["import", str(folder), "--out", str(tmp_path / "imported")])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err


def test_export_refusals_and_pickles(lm_run, tmp_path, capsys):
    root, _ = lm_run
    relu = tmp_path / "relu"
    saekit.build_sae(SAEConfig(architecture="relu", d_in=8, n_latents=16)).save(relu)
    for argv, words in [(["export", str(relu), "--format", "sparsify", "--out", str(tmp_path / "o")], "TopK"),
                        (["export", str(relu), "--format", "saelens"], "--out is required"),
                        (["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")], "no SAE folder")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("saekit: error:") and words in err, err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"W_enc": torch.zeros(2, 2)}, pickled / "sae.pt")
    for target in (pickled, pickled / "sae.pt"):
        with pytest.raises(SystemExit) as e:
            main(["info", str(target)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "never unpickles" in err and "weights_only=True" in err and "save_file" in err
