"""MLP encoders in the three regimes and alternating sparse coding, on tiny synthetic problems."""

from __future__ import annotations

import pytest
import torch

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.eval.recovery import code_mcc, dictionary_mcc
from saekit.inference import sparse_coding
from saekit.inference.mlp import (MLPEncoder, TrainSettings, train_frozen_dictionary, train_joint,
                                  train_supervised)


@pytest.fixture(scope="module")
def data() -> tuple[GroundTruth, torch.Tensor, torch.Tensor]:
    truth = GroundTruth(SyntheticConfig(n_features=8, d=6, k=2, seed=0))
    x, codes = truth.sample(256, torch.Generator().manual_seed(1))
    return truth, x, codes


def test_shapes_and_linear_case() -> None:
    enc = MLPEncoder(8, 16, [32, 24])
    assert enc.widths == [8, 32, 24, 16]
    out = enc(torch.randn(5, 8))
    assert out.shape == (5, 16) and (out >= 0).all()
    with pytest.raises(SaekitError, match="widths"):
        MLPEncoder(8, 16, [0])
    with pytest.raises(SaekitError, match="linear"):
        enc.tie_to(torch.randn(16, 8))


def test_supervised_learns_codes(data) -> None:
    _, x, codes = data
    torch.manual_seed(0)
    enc = MLPEncoder(6, 8, [64])
    with torch.no_grad():
        before = code_mcc(codes, enc(x))
    res = train_supervised(enc, x, codes, TrainSettings(steps=300, lr=1e-2, batch_size=256))
    with torch.no_grad():
        after = code_mcc(codes, enc(x))
    assert after > 0.65 and after > before + 0.2
    assert res.samples_seen == 300 * 256 and res.train_flops > 0


def test_frozen_dictionary_keeps_dictionary_and_learns(data) -> None:
    truth, x, codes = data
    W = truth.dictionary.clone()
    torch.manual_seed(0)
    enc = MLPEncoder(6, 8, [64])
    train_frozen_dictionary(enc, x, W, None, TrainSettings(steps=300, lr=1e-2, l1=0.05, batch_size=256))
    assert torch.equal(W, truth.dictionary)
    with torch.no_grad():
        assert code_mcc(codes, enc(x)) > 0.6
    with pytest.raises(SaekitError, match="zero atom"):
        train_frozen_dictionary(enc, x, torch.zeros(8, 6), None, TrainSettings(steps=1))


def _fvu(enc: MLPEncoder, dic: Dictionary, x: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = enc(x) @ dic.W_dec + dic.b_dec
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_joint_learns_and_keeps_unit_atoms_and_fixed_bias(data, device) -> None:
    x = data[1].to(device)
    torch.manual_seed(0)
    enc, dic = MLPEncoder(6, 8, []), Dictionary(8, 6)
    dic.reset_random(torch.Generator().manual_seed(0))
    enc.tie_to(dic.W_dec.detach())
    enc, dic = enc.to(device), dic.to(device)
    untrained = _fvu(enc, dic, x)  # the tied random start: about 0.7
    res = train_joint(enc, dic, x, TrainSettings(steps=200, lr=3e-3, l1=0.05, batch_size=64))
    trained = _fvu(enc, dic, x)  # about 0.1
    assert trained < 0.25 and trained < untrained - 0.4
    assert res.final_loss < untrained * float((x - x.mean(0)).pow(2).sum(1).mean())
    assert torch.allclose(dic.atom_norms(), torch.ones(8, device=device), atol=1e-5)
    assert torch.equal(dic.b_dec.detach(), torch.zeros(6, device=device))
    with pytest.raises(SaekitError, match="does not fit"):
        train_joint(MLPEncoder(6, 9, []).to(device), dic, x, TrainSettings(steps=1))


def test_sparse_coding_recovers_small_dictionary(data, device) -> None:
    truth, x, codes = data
    res = sparse_coding.learn(x.to(device), 8, sparse_coding.SCSettings(rounds=100, code_iters=30, l1=0.1))
    assert res.dictionary.device.type == device
    dictionary = res.dictionary.cpu()
    assert torch.allclose(dictionary.norm(dim=1), torch.ones(8, dtype=dictionary.dtype), atol=1e-6)
    assert dictionary_mcc(truth.dictionary, dictionary) > 0.9
    test = sparse_coding.infer(x, dictionary, 0.1)
    assert code_mcc(codes, test.codes) > 0.9
    assert res.train_flops > 0 and len(res.code_iters) == 100
    with pytest.raises(SaekitError):
        sparse_coding.learn(x, 0)


def test_mlp_started_from_a_linear_encoder_is_that_encoder(device) -> None:
    gen = torch.Generator().manual_seed(5)
    W, b, b_in = torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen), torch.randn(8, generator=gen)
    W, b, b_in = W.to(device), b.to(device), b_in.to(device)
    enc = MLPEncoder(8, 16, [16]).to(device)
    enc.start_from_linear(W, b, b_in)
    x = torch.randn(40, 8, generator=gen).to(device)
    torch.testing.assert_close(enc(x), ((x - b_in) @ W.T + b).relu())
    with pytest.raises(SaekitError, match="2d"):
        MLPEncoder(8, 16, [12]).start_from_linear(W, b)
