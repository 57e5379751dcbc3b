"""Every bad input, for every command, is one clear error: exit code 2, exactly one `saekit: error:` line
naming the problem, and every file that existed before is byte-for-byte unchanged.

Each case copies a small world (a synthetic training run with checkpoints, a TopK SAE, a tiny Llama and a
corpus, an activation store harvested from it, an SAE trained on that store, a tiny BERT), breaks one thing
in it (or passes one bad flag) and runs `saekit ...` in-process."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.cli import main

WORDS = ("the king queen lord lady speaks sleeps dreams of and to a in my thy night day sword crown "
         "love death fool ghost castle storm sea moon sun").split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tiny_lm import tiny_llama, word_tokenizer
    from transformers import BertConfig, BertForMaskedLM

    from saekit.config import DataConfig, LMConfig, SAEConfig, SyntheticConfig, TrainConfig
    from saekit.data.cache_command import CacheConfig, cache
    from saekit.sae import build_sae
    from saekit.train.trainer import train

    w = tmp_path_factory.mktemp("world")
    tok = word_tokenizer(list(WORDS))
    model = tiny_llama(tok).eval()
    model.save_pretrained(w / "model")
    tok.save_pretrained(w / "model")
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    bert.save_pretrained(w / "bert")
    tok.save_pretrained(w / "bert")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(len(WORDS), (200, 9), generator=gen)
    (w / "corpus.txt").write_text("\n".join(" ".join(WORDS[i] for i in row) for row in idx.tolist()))
    lm = LMConfig(model=str(w / "model"), hookpoint="resid_post.0", corpus=str(w / "corpus.txt"), context_length=16,
                  eval_fraction=0.2)
    cache(CacheConfig(lm=lm, out=str(w / "store"), max_tokens=0, shard_tokens=160, progress=False), model, tok)
    train(TrainConfig(sae=SAEConfig(architecture="relu", n_latents=16), data=DataConfig(source="store", store=str(w / "store")),
                      steps=3, batch_size=32, progress=False, out_dir=str(w / "lmrun")))
    train(TrainConfig(sae=SAEConfig(architecture="relu", n_latents=16), steps=10, batch_size=32, progress=False,
                      data=DataConfig(synthetic=SyntheticConfig(n_features=8, d=4, k=2)), ckpt_every=5,
                      out_dir=str(w / "run")))
    build_sae(SAEConfig(architecture="topk", d_in=4, n_latents=8, k=2)).save(w / "topk")
    (w / "afile").write_text("not a folder\n")
    return w


# ---- helpers that break one thing -----------------------------------------------------------------------

def edit_json(rel: str, fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / rel
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data))
    return setup


def cfg_json(**changes) -> Callable[[Path], None]:
    """Edit the TopK SAE's cfg.json; a value None deletes the field."""
    def fn(d):
        for k, v in changes.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
    return edit_json("topk/cfg.json", fn)


def manifest(fn) -> Callable[[Path], None]:
    return edit_json("store/train/manifest.json", fn)


def flip(rel: str, where: int = -1) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / rel
        data = bytearray(p.read_bytes())
        data[where] ^= 0x01
        p.write_bytes(bytes(data))
    return setup


def truncate(rel: str, keep: int) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / rel
        p.write_bytes(p.read_bytes()[:keep])
    return setup


def write(rel: str, text: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_text(text)
    return setup


def remove(rel: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        p = w / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return setup


def nan_weights(rel: str) -> Callable[[Path], None]:
    """A NaN saved with a matching checksum (a run that diverged, not a damaged file)."""
    def setup(w: Path) -> None:
        from saekit.io import file_sha256

        d = w / rel
        t = load_file(str(d / "model.safetensors"))
        t["dictionary.W_dec"][0, 0] = float("nan")
        save_file(t, str(d / "model.safetensors"))
        cfg = json.loads((d / "cfg.json").read_text())
        cfg["weights_sha256"] = file_sha256(d / "model.safetensors")
        (d / "cfg.json").write_text(json.dumps(cfg))
    return setup


def nan_shard(w: Path) -> None:
    """shard 0 of the train store holds a NaN, with a manifest checksum to match (found only when read)."""
    import hashlib

    from safetensors.torch import save

    d = w / "store" / "train"
    t = load_file(str(d / "shard-00000.safetensors"))
    t["acts"][0, 0] = float("nan")
    data = save(t)
    (d / "shard-00000.safetensors").write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))


def both(*fns) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        for f in fns:
            f(w)
    return setup


def nothing(w: Path) -> None:
    pass


def ckpt(w: Path) -> str:
    return f"run/checkpoints/{(w / 'run' / 'checkpoints' / 'latest').read_text().strip()}"


def flip_ckpt(name: str) -> Callable[[Path], None]:
    return lambda w: flip(f"{ckpt(w)}/{name}")(w)


SYN = ["--sae.architecture", "relu", "--sae.n-latents", "16", "--data.synthetic.n-features", "8",
       "--data.synthetic.d", "4", "--steps", "5", "--batch-size", "32", "--no-progress"]
TRAIN = ["train", *SYN, "--out-dir", "{w}/new"]
RESUME = ["train", "--config", "{w}/run/config.yaml", "--resume", "--steps", "20", "--no-progress", "--out-dir", "{w}/run"]
CACHE = ["cache", "--model", "{w}/model", "--corpus", "{w}/corpus.txt", "--hookpoint", "resid_post.0",
         "--context-length", "16", "--no-progress", "--out", "{w}/newstore"]
STORE_TRAIN = ["train", "--data.source", "store", "--data.store", "{w}/store", "--sae.architecture", "relu",
               "--sae.n-latents", "16", "--steps", "2", "--batch-size", "32", "--no-progress", "--out-dir", "{w}/new"]
SWEEP = ["sweep", *SYN[2:], "--sweep-dir", "{w}/sweep", "--eval-tokens", "64"]  # --architectures chooses
EVAL = ["eval", "{w}/topk", "--data.source", "synthetic", "--data.synthetic.d", "4", "--tokens", "64"]

# (id, setup, argv, what the error line must say)
CASES = [
    # ---- config files ---------------------------------------------------------------------------------
    ("config-unknown-field", write("c.yaml", "stepz: 3\n"), ["train", "--config", "{w}/c.yaml"], "unknown field.*stepz"),
    ("config-steps-string", write("c.yaml", "steps: many\n"), ["train", "--config", "{w}/c.yaml"], "steps.*should be int"),
    ("config-steps-bool", write("c.yaml", "steps: true\n"), ["train", "--config", "{w}/c.yaml"], "steps.*should be int.*True"),
    ("config-batch-size-bool", write("c.yaml", "batch_size: true\n"), ["train", "--config", "{w}/c.yaml"], "batch_size.*should be int"),
    ("config-lr-nan", write("c.yaml", "lr: .nan\n"), ["train", "--config", "{w}/c.yaml"], "lr must be a finite number"),
    ("config-lr-negative", write("c.yaml", "lr: -1\n"), ["train", "--config", "{w}/c.yaml"], "lr must be a positive"),
    ("config-list", write("c.yaml", "- 1\n- 2\n"), ["train", "--config", "{w}/c.yaml"], "expected a mapping"),
    ("config-bad-yaml", write("c.yaml", "steps: [\n"), ["train", "--config", "{w}/c.yaml"], "not valid YAML"),
    ("config-missing", nothing, ["train", "--config", "{w}/nope.yaml"], "config file not found"),
    ("config-unknown-architecture", write("c.yaml", "sae: {architecture: nope}\n"), ["train", "--config", "{w}/c.yaml"],
     "unknown architecture 'nope'"),
    ("config-sae-unknown-field", write("c.yaml", "sae: {architecture: topk, bogus: 1}\n"), ["train", "--config", "{w}/c.yaml"],
     "unknown field.*bogus"),
    ("config-aux-coeff-nan", write("c.yaml", "sae: {architecture: topk, aux_coeff: .nan}\n"),
     ["train", "--config", "{w}/c.yaml", "--out-dir", "{w}/new"], "sae.aux_coeff must be a finite number"),
    ("config-decay-fraction", write("c.yaml", "decay_fraction: 2\n"), ["train", "--config", "{w}/c.yaml"], "decay_fraction"),
    ("config-grad-clip-inf", write("c.yaml", "grad_clip: .inf\n"), ["train", "--config", "{w}/c.yaml"], "grad_clip must be a finite"),
    ("config-data-source", write("c.yaml", "data: {source: disk}\n"), ["train", "--config", "{w}/c.yaml"], "source"),
    # ---- train flags ----------------------------------------------------------------------------------
    ("train-steps-not-int", nothing, ["train", "--steps", "abc"], "--steps"),
    ("train-unknown-flag", nothing, ["train", "--stepz", "3"], "Unrecognized options.*--stepz"),
    ("train-grad-clip-nan", nothing, [*TRAIN, "--grad-clip", "nan"], "grad_clip must be a finite"),
    ("train-aux-coeff-nan", nothing, ["train", "--sae.aux-coeff", "nan", "--out-dir", "{w}/new"], "aux_coeff must be a finite"),
    ("train-dead-window-negative", nothing, [*TRAIN, "--dead-window-tokens", "-1"], "dead_window_tokens must be positive"),
    ("train-k-too-large", nothing, ["train", "--sae.architecture", "topk", "--sae.k", "999", "--sae.n-latents", "8",
                                    *SYN[4:], "--out-dir", "{w}/new"], "sae.k must lie in"),
    ("train-negative-l1", nothing, [*TRAIN, "--sae.l1-coeff", "-1"], "l1_coeff"),
    ("train-l1-with-topk", nothing, ["train", "--sae.architecture", "topk", "--sae.l1-coeff", "3", "--out-dir", "{w}/new"],
     "sae.l1_coeff is not used by a topk SAE"),
    ("train-k-with-gated", nothing, ["train", "--sae.architecture", "gated", "--sae.k", "5", "--out-dir", "{w}/new"],
     "sae.k is not used by a gated SAE"),
    ("train-input-scale-overwritten", nothing, [*TRAIN, "--sae.input-scale", "7"], "input_scale is estimated"),
    ("train-store-without-source", nothing, [*TRAIN, "--data.store", "{w}/store"], "data.store is set but data.source"),
    ("train-lm-settings-with-synthetic", nothing, [*TRAIN, "--data.lm.context-length", "64"], "data.lm.* is set"),
    ("train-device-cuda", nothing, [*TRAIN, "--device", "cuda"], "no CUDA device"),
    ("train-device-bogus", nothing, [*TRAIN, "--device", "gpu0"], "unknown device"),
    ("train-out-dir-is-file", nothing, [*TRAIN[:-2], "--out-dir", "{w}/afile"], "afile is an existing file"),
    ("train-adam-beta1", nothing, [*TRAIN, "--adam-beta1", "1.0"], "adam_beta1"),
    ("train-store-source-without-store", nothing, ["train", "--data.source", "store", "--out-dir", "{w}/new"],
     "needs data.store"),
    ("train-store-missing", nothing, [*STORE_TRAIN[:4], "{w}/nostore", *STORE_TRAIN[5:]], "no train activation store"),
    ("train-synthetic-k-zero", nothing, [*TRAIN, "--data.synthetic.k", "0"], "data.synthetic"),
    ("train-existing-run", nothing, [*TRAIN[:-2], "--out-dir", "{w}/run"], "already holds a run"),
    ("train-store-smaller-than-batch", nothing, [*STORE_TRAIN, "--batch-size", "100000"], "fewer than one batch of 100000"),
    ("train-lm-context-length-zero", nothing, ["train", "--data.source", "lm", "--data.lm.context-length", "0",
                                               "--out-dir", "{w}/new"], "context_length must be at least 2"),
    # ---- resume ---------------------------------------------------------------------------------------
    ("resume-other-architecture", nothing, [*RESUME, "--sae.architecture", "topk"], "sae.architecture: relu in the checkpoint"),
    ("resume-other-width", nothing, [*RESUME, "--sae.n-latents", "128"], "sae.n_latents: 16 in the checkpoint, 128"),
    ("resume-other-data", nothing, [*RESUME, "--data.synthetic.seed", "3"], "data.synthetic.seed"),
    ("resume-flipped-optimizer", flip_ckpt("optimizer.safetensors"), RESUME, "optimizer.safetensors is corrupted"),
    ("resume-flipped-trainer-state", flip_ckpt("trainer.safetensors"), RESUME, "trainer.safetensors is corrupted"),
    ("resume-flipped-weights", flip_ckpt("model.safetensors"), RESUME, "model.safetensors is corrupted"),
    ("resume-nan-weights", lambda w: nan_weights(ckpt(w))(w), RESUME, "NaN or inf"),
    ("resume-missing-checkpoint", write("run/checkpoints/latest", "step-99999999\n"), RESUME, "missing"),
    ("resume-trainer-json-damaged", lambda w: write(f"{ckpt(w)}/trainer.json", "{")(w), RESUME, "corrupted JSON"),
    # ---- activation stores ----------------------------------------------------------------------------
    ("store-d-in-null", manifest(lambda m: m.update(d_in=None)), STORE_TRAIN, "'d_in' should be a positive integer"),
    ("store-shards-null", manifest(lambda m: m.update(shards=None)), STORE_TRAIN, "'shards' should be a non-empty list"),
    ("store-shard-without-sha256", manifest(lambda m: m["shards"][0].pop("sha256")), STORE_TRAIN, "shard entry 0 has no sha256"),
    ("store-shard-bad-file-name", manifest(lambda m: m["shards"][0].update(file="../../etc/passwd")), STORE_TRAIN,
     "bad or repeated file name"),
    ("store-total-tokens-wrong", manifest(lambda m: m.update(total_tokens=5)), STORE_TRAIN, "'total_tokens' is 5"),
    ("store-tokens-bool", manifest(lambda m: m["shards"][0].update(tokens=True)), STORE_TRAIN, "'tokens' should be an integer"),
    ("store-manifest-not-json", write("store/train/manifest.json", "{"), STORE_TRAIN, "corrupted JSON"),
    ("store-incomplete", manifest(lambda m: m.update(complete=False)), STORE_TRAIN, "incomplete"),
    ("store-shard-truncated", truncate("store/train/shard-00000.safetensors", 100), STORE_TRAIN, "too few"),
    ("store-shard-missing", remove("store/train/shard-00001.safetensors"), STORE_TRAIN, "shard-00001.safetensors is missing"),
    ("store-not-a-store", nothing, [*STORE_TRAIN[:4], "{w}/run", *STORE_TRAIN[5:]], "no train activation store"),
    # ---- saved SAEs (eval, info) ----------------------------------------------------------------------
    ("eval-missing-folder", nothing, ["eval", "{w}/nosae"], "no SAE folder"),
    ("eval-cfg-missing-k", cfg_json(k=None), EVAL, "missing field.*\\bk\\b"),
    ("eval-cfg-missing-input-scale", cfg_json(input_scale=None), EVAL, "missing field.*input_scale"),
    ("eval-cfg-k-zero", cfg_json(k=0), EVAL, "sae.k must lie in"),
    ("eval-cfg-k-too-large", cfg_json(k=9), EVAL, "sae.k must lie in \\[1, n_latents=8\\]"),
    ("eval-cfg-negative-scale", cfg_json(input_scale=-1.0), EVAL, "input_scale must be a positive"),
    ("eval-cfg-k-bool", cfg_json(k=True), EVAL, "'k' should be int"),
    ("eval-cfg-foreign-field", cfg_json(l1_coeff=3.0), EVAL, "l1_coeff do not belong to a topk SAE"),
    ("eval-cfg-unknown-architecture", cfg_json(architecture="nope"), EVAL, "unknown architecture"),
    ("eval-cfg-not-json", write("topk/cfg.json", "{"), EVAL, "corrupted JSON"),
    ("eval-cfg-list", write("topk/cfg.json", "[1]"), EVAL, "expected a mapping"),
    ("eval-weights-flipped", flip("topk/model.safetensors"), EVAL, "sha256 mismatch"),
    ("eval-weights-truncated", truncate("topk/model.safetensors", 40), EVAL, "corrupted or truncated"),
    ("eval-weights-missing", remove("topk/model.safetensors"), EVAL, "missing file"),
    ("eval-weights-nan", nan_weights("topk"), EVAL, "NaN or inf"),
    ("eval-width-mismatch", nothing, [*EVAL[:-2], "--data.synthetic.d", "5"], "d_in=4 but the data has width 5"),
    ("eval-tokens-zero", nothing, [*EVAL, "--tokens", "0"], "must be positive"),
    ("eval-device-cuda", nothing, [*EVAL, "--device", "cuda"], "no CUDA device"),
    ("eval-no-data", nothing, ["eval", "{w}/topk"], "no config.yaml beside"),
    ("eval-no-path", nothing, ["eval"], "Missing"),
    ("info-missing-folder", nothing, ["info", "{w}/nosae"], "no SAE folder"),
    ("info-cfg-missing-k", cfg_json(k=None), ["info", "{w}/topk"], "missing field"),
    # ---- cache: models and corpora --------------------------------------------------------------------
    ("cache-context-length-zero", nothing, [*CACHE, "--context-length", "0"], "context_length must be at least 2"),
    ("cache-out-is-file", nothing, [*CACHE[:-2], "--out", "{w}/afile"], "afile is an existing file"),
    ("cache-model-mistyped-path", nothing, [*CACHE, "--model", "./nomodel"], "neither a model folder"),
    ("cache-model-unreachable-hub-id", nothing, [*CACHE, "--model", "nobody-xyz/no-such-model"], "neither a local folder"),
    ("cache-model-without-config", remove("model/config.json"), CACHE, "has no config.json"),
    ("cache-model-without-tokenizer", both(remove("model/tokenizer.json"), remove("model/tokenizer_config.json")), CACHE,
     "has no tokenizer files"),
    ("cache-bert", nothing, [*CACHE, "--model", "{w}/bert"], "not a causal language model"),
    ("cache-corpus-missing", nothing, [*CACHE, "--corpus", "{w}/nope.txt"], "corpus not found"),
    ("cache-corpus-whitespace", write("blank.txt", "  \n\n\t \n"), [*CACHE, "--corpus", "{w}/blank.txt"], "empty"),
    ("cache-corpus-too-small", write("tiny.txt", "the king"), [*CACHE, "--corpus", "{w}/tiny.txt"], "yields only 2 tokens"),
    ("cache-max-tokens-negative", nothing, [*CACHE, "--max-tokens", "-1"], "max_tokens"),
    ("cache-device-cuda", nothing, [*CACHE, "--device", "cuda"], "no CUDA device"),
    ("cache-dtype", nothing, [*CACHE, "--dtype", "float8"], "dtype"),
    ("cache-hookpoint-out-of-range", nothing, [*CACHE, "--hookpoint", "resid_post.9"], "out of range"),
    ("cache-other-settings", nothing, [*CACHE[:-2], "--out", "{w}/store"], "other settings"),
    ("cache-eval-fraction", nothing, [*CACHE, "--eval-fraction", "1.5"], "eval_fraction"),
    # ---- sweep ----------------------------------------------------------------------------------------
    ("sweep-width-zero", nothing, [*SWEEP, "--widths", "0"], "--widths must all be positive"),
    ("sweep-k-zero", nothing, [*SWEEP, "--architectures", "topk", "--ks", "0"], "--ks must all be positive"),
    ("sweep-l1-nan", nothing, [*SWEEP, "--l1-coeffs", "nan"], "l1_coeffs must be a finite"),
    ("sweep-base-architecture-outside-grid", nothing, [*SWEEP, "--sae.architecture", "gated", "--architectures", "relu"],
     "--sae.architecture gated is not among --architectures \\(relu\\)"),
    ("sweep-every-point-fails", nothing, [*SWEEP, "--architectures", "topk", "--ks", "999", "--widths", "16"],
     "every point of the sweep failed"),
    ("sweep-k-with-l1-architectures", nothing, [*SWEEP, "--architectures", "relu", "gated", "--sae.k", "5"],
     "sae.k=5 is used by no point of the sweep: no architecture of the sweep \\(gated, relu\\) has it"),
    ("sweep-l1-replaced-by-grid", nothing, [*SWEEP, "--sae.l1-coeff", "7"], "sae.l1_coeff=7.0 .*every point sets it from --l1-coeffs"),
    ("sweep-store-without-source", nothing, [*SWEEP, "--data.store", "{w}/store"], "data.store is set but data.source"),
    ("sweep-dir-is-file", nothing, [*SWEEP[:-4], "--sweep-dir", "{w}/afile"], "afile is an existing file"),
    ("sweep-eval-tokens-zero", nothing, [*SWEEP[:-2], "--eval-tokens", "0"], "must be positive"),
    # ---- features, steer-eval -------------------------------------------------------------------------
    ("features-out-is-file", nothing, ["features", "{w}/lmrun/sae", "--out", "{w}/afile"], "afile is an existing file"),
    ("features-n-show-zero", nothing, ["features", "{w}/lmrun/sae", "--n-show", "0"], "must be positive"),
    ("features-synthetic-sae", nothing, ["features", "{w}/run/sae"], "needs an SAE trained on language-model data"),
    ("features-latent-out-of-range", nothing, ["features", "{w}/lmrun/sae", "--latents", "99"], "99"),
    ("steer-kl-budget-nan", nothing, ["steer-eval", "{w}/lmrun/sae", "--kl-budget", "nan"], "kl_budget must be a finite"),
    ("steer-alphas-nan", nothing, ["steer-eval", "{w}/lmrun/sae", "--alphas", "nan"], "alphas must be a finite"),
    ("steer-device-cuda", nothing, ["steer-eval", "{w}/lmrun/sae", "--device", "cuda"], "no CUDA device"),
    # ---- verify ---------------------------------------------------------------------------------------
    ("verify-nothing", nothing, ["verify", "{w}/nothing"], "nothing to verify"),
    ("verify-not-a-known-folder", nothing, ["verify", "{w}/model"], "neither an activation store"),
    ("verify-nan-shard", nan_shard, ["verify", "{w}/store"], "NaN"),
    ("verify-flipped-shard", flip("store/eval/shard-00000.safetensors"), ["verify", "{w}/store"], "sha256 mismatch"),
    ("verify-wrong-token-count", manifest(lambda m: (m["shards"][1].update(tokens=m["shards"][1]["tokens"] - 1),
                                                     m.update(total_tokens=m["total_tokens"] - 1))),
     ["verify", "{w}/store/train"], "the manifest says"),
    ("verify-sae-flipped", flip("topk/model.safetensors"), ["verify", "{w}/topk"], "sha256 mismatch"),
    ("verify-checkpoint-flipped", flip_ckpt("optimizer.safetensors"), ["verify", "{w}/run"], "corrupted"),
    # ---- other commands -------------------------------------------------------------------------------
    ("unknown-command", nothing, ["trian"], "unknown command"),
    ("reproduce-unknown-name", nothing, ["reproduce", "nope"], "nope"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_there_are_at_least_60_cases_with_distinct_names():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 60, len(names)


@pytest.mark.parametrize("name,setup,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(world, tmp_path, capsys, monkeypatch, name, setup, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is refused at once, not after retries
    w = tmp_path / "w"
    shutil.copytree(world, w)
    setup(w)
    before = _snapshot(w)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{w}", str(w)) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("saekit: error:")]
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    after = _snapshot(w)
    changed = [p for p, data in before.items() if after.get(p) != data]
    assert not changed, f"changed or removed: {changed}"
