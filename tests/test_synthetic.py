import torch

from saekit.config import SyntheticConfig
from saekit.data.synthetic import GroundTruth, SyntheticSource


def test_oneill_generator_matches_definition():
    truth = GroundTruth(SyntheticConfig(n_features=16, d=8, k=3, seed=5))
    assert torch.allclose(truth.dictionary.norm(dim=1), torch.ones(16))
    x, codes = truth.sample(500, torch.Generator().manual_seed(0))
    assert torch.equal((codes != 0).sum(dim=1), torch.full((500,), 3))  # exactly K active
    assert (codes >= 0).all()  # magnitudes |N(0,1)|
    assert torch.allclose(x, codes @ truth.dictionary)  # no noise
    # uniform choice: every atom is active about K/N of the time
    freq = (codes != 0).float().mean(dim=0)
    assert ((freq - 3 / 16).abs() < 0.07).all()


def test_same_seed_same_dictionary_and_batches():
    cfg = SyntheticConfig(n_features=16, d=8, k=3)
    a, b = SyntheticSource(cfg), SyntheticSource(cfg)
    assert torch.equal(a.truth.dictionary, b.truth.dictionary)
    batch_a, pos = next(a.batches(32, {"batch": 7}))
    batch_b, _ = next(b.batches(32, {"batch": 7}))
    assert torch.equal(batch_a.acts, batch_b.acts) and pos == {"batch": 8}


def test_fixed_training_set_is_cycled_in_shuffled_epochs():
    src = SyntheticSource(SyntheticConfig(n_features=8, d=4, k=2, n_samples=10))
    stream = src.batches(4)
    rows = torch.cat([next(stream)[0].acts for _ in range(5)])  # 20 rows = 2 epochs
    data = src.train_set[0]
    for epoch in (rows[:10], rows[10:]):
        assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, data.tolist()))


def test_eval_split_differs_from_train():
    cfg = SyntheticConfig(n_features=8, d=4, k=2)
    train = next(SyntheticSource(cfg).batches(16))[0].acts
    held = next(SyntheticSource(cfg, split="eval").batches(16))[0].acts
    assert not torch.equal(train, held)


def test_powerlaw_generator_frequencies_and_correlation():
    cfg = SyntheticConfig(generator="powerlaw", n_features=32, d=16, k=3, powerlaw_exponent=1.0,
                          correlation=0.6, group_size=4)
    truth = GroundTruth(cfg)
    _, codes = truth.sample(40000, torch.Generator().manual_seed(0))
    active = (codes != 0).float()
    assert torch.allclose(active.mean(dim=0).double(), truth.probabilities, atol=0.015)
    assert abs(active.sum(dim=1).mean().item() - 3) < 0.1
    corr = torch.corrcoef(active.T)
    within = corr[8, 9].item()  # same group of 4
    across = corr[8, 12].item()  # different groups
    assert within > 0.1 and abs(across) < 0.05


def test_hierarchical_generator_children_fire_only_with_their_parent():
    """16 features in groups of 4 (parents 0, 4, 8, 12): p = K / (P·2) = 3 / 8 per parent, each firing
    parent with exactly one of its 3 children, each child 1/3 of its parent's firings; E[#active] = K."""
    import pytest

    from saekit.errors import SaekitError

    cfg = SyntheticConfig(generator="hierarchical", n_features=16, d=8, k=3, group_size=4, seed=1)
    truth = GroundTruth(cfg)
    assert truth.parent_probability == pytest.approx(3 / 8)
    x, codes = truth.sample(40000, torch.Generator().manual_seed(0))
    assert torch.allclose(x, codes @ truth.dictionary) and (codes >= 0).all()
    on = (codes != 0).view(-1, 4, 4)  # [sample, group, member]; member 0 is the parent
    parents, children = on[:, :, 0], on[:, :, 1:]
    assert torch.equal(children.sum(dim=2), parents.long())  # exactly one child with a parent, none without
    freq = on.float().mean(dim=0)
    assert torch.allclose(freq[:, 0], torch.full((4,), 3 / 8), atol=0.01)
    assert torch.allclose(freq[:, 1:], torch.full((4, 3), 1 / 8), atol=0.01)
    assert abs(on.sum(dim=(1, 2)).float().mean().item() - 3) < 0.03
    with pytest.raises(SaekitError, match="divide"):
        GroundTruth(SyntheticConfig(generator="hierarchical", n_features=10, d=8, k=3, group_size=4))
    with pytest.raises(SaekitError, match="> 1"):
        GroundTruth(SyntheticConfig(generator="hierarchical", n_features=8, d=8, k=5, group_size=4))
