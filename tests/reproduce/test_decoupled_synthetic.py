"""`saekit reproduce decoupled-synthetic`: the smoke scale end to end (write-up, CSV, plots, cache reuse),
and the pieces a wrong result would come from: random streams, disjoint sample sets, selection on
validation, batched methods equal to saekit.inference's, chance flags, verdicts, skipped cells."""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saekit.errors import SaekitError
from saekit.eval.recovery import chance_dictionary_mcc, code_mcc, dictionary_mcc
from saekit.inference import iterative, mlp, sparse_coding
from saekit.reproduce import decoupled_synthetic as ds
from saekit.reproduce.decoupled_synthetic import methods as sm
from saekit.reproduce.decoupled_synthetic import config, pipeline, verdicts
from saekit.reproduce.common import Run
from saekit.rng import stream_seed


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("ds")
    run = Run(name="decoupled-synthetic", scale="smoke", out=root / "out", work=root / "work",
              command="saekit reproduce decoupled-synthetic --scale smoke")
    torch.set_num_threads(1)
    ds.reproduce(ds.SCALES["smoke"], run)
    return run


# ------------------------------------------------------------------------------------ end to end

def test_smoke_writes_readme_csv_json_plots(smoke: Run) -> None:
    out = smoke.out
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "runs.csv", "summary.csv", "chance.csv", "results.json", "main_quality_vs_flops.png",
            "grid_code_mcc.png", "grid_dict_mcc.png", "grid_gap_vs_n.png"} <= names
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))
    readme = (out / "README.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    # every claim has a row in the verdict table, with a verdict from the three allowed
    assert len(doc["claims"]) == 13
    table = readme.split("## Verdicts")[1].split("## Main setting")[0]
    for c in doc["claims"]:
        assert c["claim"] in table
        assert c["verdict"] in ("reproduced", "not reproduced", "undecided at this power")
    assert "superseded" in readme and "Smoke scale" in readme and "chance" in readme
    main = readme.split("## Main setting")[1].split("## Grid")[0]
    assert "0.862" in main and "0.691" in main and "0.837" in main  # the paper's figures beside ours
    # the skipped cell (K=9 >= M=8) is named with its reason
    assert {(c["n"], c["m"], c["k"]) for c in doc["skipped_cells"]} == {(16, 8, 9), (32, 8, 9)}
    assert "not identifiable" in readme
    # every method of every regime is in the main setting; every MCC lies in [0, 1], inference costs FLOPs
    keys = {s["key"] for s in doc["main_summary"]}
    assert keys == set(sm.METHODS)
    assert {(s["N"], s["M"], s["K"]) for s in doc["grid_summary"]} == {(16, 8, 3), (32, 8, 3)}
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 2 * len(sm.METHODS) + 2 * 2 * len(config.GRID_METHODS)
    for r in rows:
        assert 0.0 <= float(r["code_mcc"]) <= 1.0
        assert float(r["infer_flops_per_sample"]) > 0
        if r["dict_mcc"]:
            assert 0.0 <= float(r["dict_mcc"]) <= 1.0
    # the chosen value is always the candidate with the best *validation* score
    for r in doc["main_runs"] + doc["grid_runs"]:
        if r["candidates"]:
            best = max(r["candidates"], key=lambda c: c[1])
            assert r["value"] == best[0] and r["val_code_mcc"] == best[1]


def test_rerun_reuses_every_cached_result(smoke: Run, monkeypatch) -> None:
    before = (smoke.out / "summary.csv").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    for name in ("run_regime", "train_ensemble", "sparse_coding_batched", "proximal_batched", "chance"):
        monkeypatch.setattr(sm, name, boom)
    (smoke.out / "README.md").unlink()
    ds.reproduce(ds.SCALES["smoke"], smoke)
    assert (smoke.out / "README.md").is_file()
    assert (smoke.out / "summary.csv").read_text() == before


def test_a_lost_result_is_recomputed_alone(smoke: Run, monkeypatch) -> None:
    cfg = ds.SCALES["smoke"]
    root = pipeline.setting_root(cfg, smoke.work, "grid", cfg.grid)
    lost = root / "unknown" / "N32-M8-K3" / "seed1.json"
    kept = json.loads(lost.read_text())
    lost.write_text("{ truncated")  # a file a killed run left half-written is recomputed too
    calls = []
    real = sm.run_regime

    def counting(regime, ps, budget):
        calls.append((regime, [(p.cell, p.seed) for p in ps]))
        return real(regime, ps, budget)

    monkeypatch.setattr(sm, "run_regime", counting)
    ds.reproduce(cfg, smoke)
    assert calls == [("unknown", [((32, 8, 3), 1)])]
    again = json.loads(lost.read_text())["rows"]
    assert len(again) == len(kept["rows"])
    for new, old in zip(again, kept["rows"]):  # the same numbers again (alone instead of batched with seed 0)
        assert new["method"] == old["method"] and new["value"] == old["value"]
        assert new["code_mcc"] == pytest.approx(old["code_mcc"], abs=1e-4)


# ------------------------------------------------------------------------------- randomness

@pytest.mark.parametrize("truth_seed,method_seed", [(0, 0), (1, 1), (0, 1)])
def test_no_method_starts_near_the_truth(truth_seed: int, method_seed: int) -> None:
    n, m, k = 16, 8, 3
    truth = sm.make_problem(n, m, k, truth_seed, 8, 8, 8).truth
    p = sm.make_problem(n, m, k, method_seed, 8, 8, 8)
    chance = chance_dictionary_mcc(truth, n, draws=50, seed=123)
    bound = min(chance["mean"] + 4 * chance["sd"], 0.95)
    starts = {key: sm.initial_dictionary(key, p) for key in ("unknown/sae", "unknown/mlp", "unknown/sc")}
    # the supervised linear encoder starts at random rows (the known-dictionary SAE encoder is tied to the
    # given truth by design, the unknown-dictionary one to its own random dictionary)
    enc = sm.EnsembleMLP.initialise(m, n, (), [sm.init_stream("known_codes/sae", p)], 1, torch.device("cpu"))
    starts["known_codes/sae encoder rows"] = enc.weights[0][0].detach()
    for key, W in starts.items():
        mcc = dictionary_mcc(truth, W)
        assert mcc < bound, f"{key} starts at dictionary MCC {mcc:.3f} to the truth (chance {chance['mean']:.3f})"
    # the streams themselves are distinct, and SAE and MLP do not share a start
    assert not torch.allclose(starts["unknown/sae"], starts["unknown/mlp"])


def test_every_stream_has_its_own_state() -> None:
    names = ["decoupled.truth", "decoupled.train", "decoupled.validation", "decoupled.test"]
    names += [f"decoupled.init.{key}" for key in sm.METHODS] + [f"decoupled.order.{key}" for key in sm.METHODS]
    seeds = {stream_seed(name, s, 16, 8, 3) for name in names for s in range(5)}
    seeds |= {stream_seed(name, s, 32, 8, 3) for name in names for s in range(5)}
    assert len(seeds) == len(names) * 5 * 2


def test_train_validation_test_are_disjoint_and_reproducible() -> None:
    p = sm.make_problem(16, 8, 3, 0, 256, 128, 256)
    q = sm.make_problem(16, 8, 3, 0, 256, 128, 256)
    assert torch.equal(p.x_val, q.x_val) and torch.equal(p.truth, q.truth)
    sets = {"train": p.x, "validation": p.x_val, "test": p.x_test}
    for a in sets:
        for b in sets:
            if a < b:
                assert torch.cdist(sets[a], sets[b]).min() > 1e-6, f"{a} and {b} share a sample"
    # independent streams: row i of one set is unrelated to row i of another (one shared stream would give
    # e.g. the same supports, drawn first, with different magnitudes)
    supports = {name: (c > 0)[:128] for name, c in (("train", p.codes), ("validation", p.codes_val),
                                                   ("test", p.codes_test))}
    for a in supports:
        for b in supports:
            if a < b:
                same = (supports[a] == supports[b]).all(dim=1).float().mean()
                assert same < 0.05, f"{a} and {b} share supports row by row ({same:.2f})"
    other = sm.make_problem(16, 8, 3, 1, 256, 128, 256)
    assert torch.cdist(p.x_val, other.x_test).min() > 1e-6 and not torch.allclose(p.truth, other.truth)
    # the codes are the truth's: x = s D exactly, K active per sample
    assert torch.allclose(p.codes_val @ p.truth, p.x_val, atol=1e-5)
    assert ((p.codes_test > 0).sum(dim=1) == 3).all()


# -------------------------------------------------------------------------------- selection

def test_select_takes_the_best_validation_score() -> None:
    assert sm.select([0.1, 0.3, 1.0], [0.5, 0.9, 0.9]) == 1  # first on ties
    assert sm.select([0.1, 0.3], [math.nan, 0.2]) == 1
    with pytest.raises(SaekitError):
        sm.select([0.1, 0.3], [0.5])


def test_lambda_is_chosen_on_validation_not_test() -> None:
    """Validation codes are replaced by FISTA's codes at λ = 3, so validation prefers λ = 3 while the test
    samples (true codes) prefer λ = 0.01: the row must report λ = 3 and the test MCC at λ = 3."""
    p = sm.make_problem(16, 8, 3, 0, 64, 256, 256)
    big, small = 3.0, 0.01
    p.codes_val = iterative.fista(p.x_val, p.truth, l1=big, max_iters=3000, tol=1e-6).codes
    test_at = {lam: code_mcc(p.codes_test, iterative.fista(p.x_test, p.truth, l1=lam, max_iters=3000, tol=1e-6).codes)
               for lam in (big, small)}
    assert test_at[small] > test_at[big] + 0.02  # the test set would have chosen the other λ
    budget = sm.Budget(lambdas=(small, big), ito_max_iters=3000, ito_tol=1e-6, methods=("known_dictionary/fista",))
    (row,) = sm.run_regime("known_dictionary", [p], budget)[0]
    assert row["value"] == big
    assert row["code_mcc"] == pytest.approx(test_at[big], abs=1e-3)
    assert [c[0] for c in row["candidates"]] == [small, big] and row["candidates"][1][1] > 0.99


def test_per_method_lambda_candidates() -> None:
    b = sm.Budget(lambdas=(0.1, 0.3), lambdas_by_method={"unknown/sc": (1.0, 2.0, 3.0)})
    assert b.candidates("unknown/sc") == (1.0, 2.0, 3.0) and b.candidates("unknown/sae") == (0.1, 0.3)
    with pytest.raises(SaekitError, match="unknown method"):
        sm.Budget(lambdas_by_method={"nope": (0.1,)}).validate()
    with pytest.raises(SaekitError, match="finite"):
        sm.Budget(lambdas=(-1.0,)).validate()
    assert sm.pursuit_ks(3, 16, 8, (0.5, 1.0, 2.0)) == [2, 3, 6] and sm.pursuit_ks(1, 4, 8, (0.5, 1.0)) == [1]
    assert sm.pursuit_ks(6, 16, 8, (0.5, 1.0, 2.0)) == [3, 6, 7]  # fewer atoms than dimensions


def test_pursuit_runs_where_2k_exceeds_m() -> None:
    """K=6, M=8: the candidate 2K=12 would make OMP's Gram matrix singular; it is capped at M − 1."""
    p = sm.make_problem(16, 8, 6, 0, 16, 256, 64)
    budget = sm.Budget(methods=("known_dictionary/mp", "known_dictionary/omp"))
    rows = sm.run_regime("known_dictionary", [p], budget)[0]
    assert {r["key"] for r in rows} == {"known_dictionary/mp", "known_dictionary/omp"}
    assert all(max(c[0] for c in r["candidates"]) == 7 for r in rows)


# ------------------------------------------------------------------ batched == saekit.inference

@pytest.fixture(scope="module")
def two_problems() -> list[sm.Problem]:
    return [sm.make_problem(16, 8, 3, s, 256, 64, 64) for s in (0, 1)]


def _copy_into(enc: sm.EnsembleMLP, e: int, hidden: list[int]) -> mlp.MLPEncoder:
    m = mlp.MLPEncoder(8, 16, hidden)
    linears = [layer for layer in m.net if isinstance(layer, torch.nn.Linear)]
    with torch.no_grad():
        for layer, W, b in zip(linears, enc.weights, enc.biases):
            layer.weight.copy_(W[e])
            layer.bias.copy_(b[e])
    return m


def test_ensemble_training_equals_one_model_at_a_time(two_problems) -> None:
    from saekit.dictionary import Dictionary

    x = torch.stack([p.x for p in two_problems])
    gen = lambda s: torch.Generator().manual_seed(100 + s)  # noqa: E731
    lam = torch.tensor([0.1, 0.3, 0.1, 0.3], dtype=torch.float64)
    # joint (unknown dictionary): 2 seeds x 2 λ
    enc = sm.EnsembleMLP.initialise(8, 16, (32,), [torch.Generator().manual_seed(s) for s in (5, 6)], 2,
                                    torch.device("cpu"))
    starts = [_copy_into(enc, e, [32]) for e in range(4)]
    D0 = torch.stack([sm.random_atoms(16, 8, torch.Generator().manual_seed(s)) for s in (7, 8)]).repeat_interleave(2, 0)
    loss, seen, D = sm.train_ensemble(enc, x, [gen(0), gen(1)], 2, 25, 1e-2, 64, dictionary=D0,
                                      learn_dictionary=True, l1=lam)
    for e in range(4):
        dic = Dictionary(16, 8)
        with torch.no_grad():
            dic.W_dec.copy_(D0[e])
        res = mlp.train_joint(starts[e], dic, two_problems[e // 2].x,
                              mlp.TrainSettings(steps=25, lr=1e-2, batch_size=64, l1=float(lam[e]), seed=100 + e // 2))
        assert res.final_loss == pytest.approx(float(loss[e]), rel=1e-4)
        assert torch.allclose(dic.W_dec, D[e], atol=1e-5) and res.samples_seen == seen
    # supervised (known codes), linear encoder
    codes = torch.stack([p.codes for p in two_problems])
    enc = sm.EnsembleMLP.initialise(8, 16, (), [torch.Generator().manual_seed(s) for s in (5, 6)], 1,
                                    torch.device("cpu"))
    starts = [_copy_into(enc, e, []) for e in range(2)]
    loss, _, _ = sm.train_ensemble(enc, x, [gen(0), gen(1)], 1, 25, 1e-2, 64, codes=codes)
    for e in range(2):
        res = mlp.train_supervised(starts[e], two_problems[e].x, two_problems[e].codes,
                                   mlp.TrainSettings(steps=25, lr=1e-2, batch_size=64, seed=100 + e))
        assert res.final_loss == pytest.approx(float(loss[e]), rel=1e-4)
        assert torch.allclose(starts[e].net[0].weight, enc.weights[0][e], atol=1e-5)


def test_batched_ista_fista_and_sparse_coding_equal_the_sequential_ones(two_problems) -> None:
    from saekit.data.synthetic import mix_seed

    x = torch.stack([p.x_val for p in two_problems])
    W = torch.stack([p.truth for p in two_problems])
    lams = [0.05, 0.3]
    for accelerated, solver in ((True, iterative.fista), (False, iterative.ista)):
        res = sm.proximal_batched(x, W, torch.tensor(lams, dtype=torch.float64), 400, 1e-5, accelerated=accelerated)
        for e in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # ISTA may stop at the cap: the same in both
                ref = solver(x[e], W[e], l1=lams[e], max_iters=400, tol=1e-5)
            assert res.n_iters[e] == ref.n_iters and res.converged[e] == ref.converged
            assert torch.allclose(res.codes[e], ref.codes, atol=1e-4)
    xs = torch.stack([p.x for p in two_problems])
    gens = [torch.Generator().manual_seed(mix_seed(s, 0x5C)) for s in (3, 4)]
    Wb, train = sm.sparse_coding_batched(xs, 16, torch.tensor(lams, dtype=torch.float64), 6, 5, gens)
    for e in range(2):
        ref = sparse_coding.learn(xs[e], 16, sparse_coding.SCSettings(rounds=6, code_iters=5, l1=lams[e], seed=3 + e))
        assert torch.allclose(Wb[e], ref.dictionary, atol=1e-4) and train[e] == ref.train_flops


# ----------------------------------------------------------------------- aggregation, verdicts

def _rows(key: str, values: list[float], cell=(16, 8, 3), metric: str = "code_mcc") -> list[dict]:
    regime = sm.METHODS[key][0]
    return [{"regime": regime, "key": key, "method": key, "N": cell[0], "M": cell[1], "K": cell[2], "seed": s,
             "param": "", "value": None, "candidates": [], metric: v, "dict_mcc": None if metric != "dict_mcc" else v}
            for s, v in enumerate(values)]


def _chance(cell=(16, 8, 3), code=(0.40, 0.42, 0.41), dic=(0.66, 0.67, 0.68)) -> list[dict]:
    return [{"N": cell[0], "M": cell[1], "K": cell[2], "seed": s, "random_dict_mcc": d, "untrained_sae_dict_mcc": d,
             "untrained_sae_code_mcc": c, "untrained_sae_l0": 8.0} for s, (c, d) in enumerate(zip(code, dic))]


def test_summary_intervals_and_chance_flags() -> None:
    rows = _rows("unknown/sae", [0.5, 0.7]) + _rows("unknown/sc", [0.41, 0.42])
    summary, chance = verdicts.summarise(rows, _chance())
    sae = next(s for s in summary if s["key"] == "unknown/sae")
    assert sae["code_mcc"]["mean"] == pytest.approx(0.6) and sae["code_mcc"]["n"] == 2
    assert sae["code_mcc"]["hi"] - sae["code_mcc"]["mean"] == pytest.approx(12.706 * 0.1, rel=1e-3)  # t(0.975, 1)
    assert sae["dict_mcc"]["n"] == 0 and sae["above_chance_dict"] is None
    sc = next(s for s in summary if s["key"] == "unknown/sc")
    assert sc["above_chance_code"] is False  # at the untrained SAE's level
    clear = verdicts.summarise(_rows("unknown/sc", [0.9, 0.91, 0.92]), _chance())[0][0]
    assert clear["above_chance_code"] is True
    one = verdicts.summarise(_rows("unknown/sc", [0.9]), _chance())[0][0]
    assert one["above_chance_code"] is None
    at_chance_dict = verdicts.summarise(_rows("unknown/sc", [0.66, 0.70, 0.68], metric="dict_mcc"), _chance())[0][0]
    assert at_chance_dict["above_chance_dict"] is False


def test_verdicts_from_paired_intervals() -> None:
    rows = _rows("unknown/sc", [0.8, 0.85, 0.9]) + _rows("unknown/sae", [0.5, 0.52, 0.55])
    assert verdicts.verdict(verdicts.paired(rows, "unknown/sc", "unknown/sae", (16, 8, 3))) == "reproduced"
    assert verdicts.verdict(verdicts.paired(rows, "unknown/sae", "unknown/sc", (16, 8, 3))) == "not reproduced"
    noisy = _rows("unknown/mlp", [0.3, 0.9, 0.5])
    assert verdicts.verdict(verdicts.paired(rows + noisy, "unknown/mlp", "unknown/sae", (16, 8, 3))) == "undecided at this power"
    assert verdicts.verdict({"mean": 1.0, "lo": math.nan, "hi": math.nan, "n": 1}) == "undecided at this power"
    assert verdicts.grid_verdict({"cells": 4, "above": 3, "below": 0, "undecided": 1}) == "reproduced"
    assert verdicts.grid_verdict({"cells": 4, "above": 3, "below": 1, "undecided": 0}) == "undecided at this power"
    assert verdicts.grid_verdict({"cells": 4, "above": 1, "below": 2, "undecided": 1}) == "not reproduced"


def test_trend_of_the_gap_with_n() -> None:
    cells = [(n, 8, 3) for n in (16, 32, 64)]
    rows = []
    for i, cell in enumerate(cells):  # the gap grows by 0.1 per doubling of N, with seed noise
        rows += _rows("unknown/sae", [0.5, 0.5, 0.5], cell)
        rows += _rows("unknown/sc", [0.6 + 0.1 * i + e for e in (0.0, 0.01, -0.01)], cell)
    ci, per_mk = verdicts.trend(rows, "unknown/sc", "unknown/sae", cells)
    assert ci["mean"] == pytest.approx(0.1, abs=1e-2) and verdicts.verdict(ci) == "reproduced"
    assert set(per_mk) == {(8, 3)}
    flat = [r for r in rows if r["key"] == "unknown/sae"]
    flat += [dict(r, key="unknown/mlp") for r in rows if r["key"] == "unknown/sae"]
    ci, _ = verdicts.trend(flat, "unknown/mlp", "unknown/sae", cells)
    assert verdicts.verdict(ci) == "undecided at this power"


# --------------------------------------------------------------------------------- config, cells

def test_cells_that_make_no_sense_are_skipped_with_a_reason() -> None:
    assert sm.cell_spec(16, 8, 9).skip and "identifiable" in sm.cell_spec(16, 8, 9).skip
    assert sm.cell_spec(16, 8, 8).skip  # K = M
    assert not sm.cell_spec(16, 8, 6).skip and "M/2" in sm.cell_spec(16, 8, 6).note
    assert not sm.cell_spec(256, 32, 9).skip and not sm.cell_spec(256, 32, 9).note
    specs = pipeline.grid_cells(ds.SCALES["cpu"])
    assert len(specs) == 45 and sum(1 for c in specs if not c.skip) == 40
    assert {(c.m, c.k) for c in specs if c.skip} == {(8, 9)}


def test_bad_configs_are_refused() -> None:
    with pytest.raises(SaekitError, match="K < M"):
        config.validate(replace(ds.SCALES["smoke"], k=8))
    with pytest.raises(SaekitError, match="unknown method"):
        config.validate(replace(ds.SCALES["smoke"], main=sm.Budget(methods=("unknown/nope",))))
    with pytest.raises(SaekitError):
        sm.make_problem(4, 8, 5, 0, 8, 8, 8)  # K > N
    for scale in ds.SCALES.values():
        scale.main.validate()
        scale.grid.validate()
    assert ds.SCALES["gpu"].device == "cuda" and len(ds.SCALES["cpu"].seeds) == 5


def test_cache_folder_depends_on_the_budget(tmp_path: Path) -> None:
    cfg = ds.SCALES["smoke"]
    a = pipeline.setting_root(cfg, tmp_path, "grid", cfg.grid)
    b = pipeline.setting_root(cfg, tmp_path, "grid", replace(cfg.grid, steps=cfg.grid.steps + 1))
    assert a != b and a == pipeline.setting_root(cfg, tmp_path, "grid", replace(cfg.grid))
