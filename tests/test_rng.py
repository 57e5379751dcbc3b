"""Named random streams: an SAE never starts at the synthetic truth, whatever the seeds."""

import pytest
import torch

from saekit.config import DataConfig, SAEConfig, SyntheticConfig, TrainConfig
from saekit.data.synthetic import SyntheticSource
from saekit.eval.recovery import chance_dictionary_mcc, code_mcc, dictionary_mcc
from saekit.rng import stream, stream_seed
from saekit.train.trainer import initialise


def test_streams_are_deterministic_and_independent_by_name():
    assert stream_seed("sae.init", 0) == stream_seed("sae.init", 0)
    assert stream_seed("sae.init", 0) != stream_seed("synthetic.atoms", 0)
    assert stream_seed("sae.init", 0) != stream_seed("sae.init", 1)
    assert stream_seed("a", 1, 2) != stream_seed("a", 2, 1)
    a = torch.randn(5, generator=stream("sae.init", 0))
    assert torch.equal(a, torch.randn(5, generator=stream("sae.init", 0)))
    assert not torch.allclose(a, torch.randn(5, generator=stream("synthetic.atoms", 0)))
    assert 0 <= stream_seed("x", -5) < 2**63


@pytest.mark.parametrize("init_seed,truth_seed", [(0, 0), (1, 1), (0, 1)])
def test_initial_dictionary_is_at_chance_level(init_seed, truth_seed):
    """Trains nothing: the SAE a new user's run starts from is no closer to the truth than a random
    dictionary (before the fix, seeds (0, 0) gave dictionary MCC 1.0 at step 0)."""
    data = DataConfig(synthetic=SyntheticConfig(n_features=64, d=32, k=3, seed=truth_seed))
    cfg = TrainConfig(sae=SAEConfig(architecture="topk", n_latents=64, k=3), data=data, seed=init_seed,
                      init_samples=1024)
    source = SyntheticSource(data.synthetic)
    sae = initialise(cfg, source)
    truth = source.truth.dictionary
    chance = chance_dictionary_mcc(truth, 64, draws=30)
    mcc = dictionary_mcc(truth, sae.W_dec.detach())
    assert abs(mcc - chance["mean"]) < 5 * chance["sd"] + 0.02, (mcc, chance)
    # and its codes are no better than an untrained SAE of another seed's
    x, codes = source.eval_set(2048)
    other = initialise(TrainConfig(sae=cfg.sae, data=data, seed=init_seed + 17, init_samples=1024), source)
    with torch.no_grad():
        mine, theirs = code_mcc(codes, sae.encode(x)), code_mcc(codes, other.encode(x))
    assert abs(mine - theirs) < 0.1


def test_chance_level_grows_with_atoms_per_dimension():
    """A random dictionary's MCC is high when atoms are many for their dimension (the issue: ~0.67 at N=16, M=8,
    ~0.87 at N=256, M=8): an MCC means something only above this."""
    small = chance_dictionary_mcc(torch.nn.functional.normalize(torch.randn(16, 8, generator=stream("t", 1)), dim=1),
                                  16, draws=20)
    big = chance_dictionary_mcc(torch.nn.functional.normalize(torch.randn(256, 8, generator=stream("t", 2)), dim=1),
                                256, draws=5)
    assert 0.55 < small["mean"] < 0.8
    assert big["mean"] > small["mean"] + 0.1
    truth = torch.nn.functional.normalize(torch.randn(16, 8, generator=stream("t", 3)), dim=1)
    assert dictionary_mcc(truth, truth) == pytest.approx(1.0)

