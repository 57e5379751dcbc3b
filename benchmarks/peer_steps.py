"""One training step of the peer libraries, called the way their own trainers call it (runs only in
benchmarks/.venv-peers; imported by train_step.py's child processes, never by saekit).

- SAELens (sae-lens): ``SAETrainer._train_step``: ``sae.training_forward_pass(TrainStepInput(...))``,
  the firing statistics it keeps on the codes, ``loss.backward()``, ``clip_grad_norm_(…, 1.0)``,
  ``Adam.step()``, ``zero_grad()``.
- sparsify (eai-sparsify): ``Trainer.fit`` with ``loss_fn="fvu"`` and ``optimizer="adam"``:
  ``set_decoder_norm_to_unit_norm()``, ``sae(x, y=x, dead_mask=...)``, ``(fvu + auxk_alpha·auxk +
  multi_topk_fvu/8).backward()``, ``remove_gradient_parallel_to_decoder_directions()``, ``Adam.step()``,
  ``zero_grad()`` (sparsify has no gradient clipping; its CPU decoder is ``embedding_bag``).
"""

from __future__ import annotations

import torch


def _saelens(spec: dict, c: dict, trained_bias):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d, m, device = c["d_in"], c["n_latents"], spec.get("device", "cpu")
    arch = spec["arch"]
    common = dict(d_in=d, d_sae=m, device=device)
    if arch == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=5.0))
    elif arch == "gated":
        sae = GatedTrainingSAE(GatedTrainingSAEConfig(**common, l1_coefficient=5.0))
    elif arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=c["k"]))
    elif arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, l0_coefficient=1.0))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=c["k"]))
    elif arch == "matryoshka":  # the prefixes saekit's matryoshka uses by default: n/8, n/4, n/2, n
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            **common, k=c["k"], matryoshka_widths=[m // 8, m // 4, m // 2, m]))
    else:
        return None
    betas = (0.0, 0.999) if arch == "gated" else (0.9, 0.999)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-6, betas=betas)  # tiny: sparsity holds
    coefficients = {name: (v.value if isinstance(v, TrainCoefficientConfig) else v)
                    for name, v in sae.get_coefficients().items()}
    dead = torch.zeros(m, dtype=torch.bool, device=device)
    freq = torch.zeros(m, device=device)
    since_fired = torch.zeros(m, device=device)

    def set_trained(x):
        if arch not in ("relu", "gated", "jumprelu"):
            return
        with torch.no_grad():
            z = (x - sae.b_dec) @ sae.W_enc
            shift = sae.threshold if arch == "jumprelu" else 0.0  # fire above the threshold, not above 0
            (sae.b_gate if arch == "gated" else sae.b_enc).copy_(trained_bias(z.cpu(), c["k"]).to(z.device) + shift)

    def step(x):
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
            freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return out.feature_acts

    return sae, set_trained, step


def _sparsify(spec: dict, c: dict, trained_bias):
    from sparsify import SparseCoder, SparseCoderConfig

    if spec["arch"] != "topk":
        return None
    sae = SparseCoder(c["d_in"], SparseCoderConfig(num_latents=c["n_latents"], k=c["k"]), device=spec.get("device", "cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-6)  # their default is 2e-4/sqrt(M/2^14); tiny here

    def step(x):
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, y=x, dead_mask=None)  # auxk_alpha defaults to 0: the trainer passes no dead mask
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        return out.latent_indices

    return sae, None, step


def run(spec: dict, c: dict, timed, rss_now_kb, trained_bias, reset_peak_rss) -> dict:
    base = rss_now_kb()
    built = (_saelens if spec["lib"] == "saelens" else _sparsify)(spec, c, trained_bias)
    if built is None:
        raise SystemExit(f"{spec['lib']} has no {spec['arch']} architecture")
    sae, set_trained, step = built
    x = torch.randn(c["batch"], c["d_in"], generator=torch.Generator().manual_seed(0)).to(spec.get("device", "cpu"))
    if spec["sparsity"] == "trained" and set_trained is not None:
        set_trained(x)
    last = {}
    reset_peak_rss()

    def one():
        last.pop("codes", None)
        last["codes"] = step(x)

    times = timed(one, spec["steps"], spec["warmup"])
    codes = last["codes"]
    l0 = float((codes != 0).sum(-1).float().mean()) if codes.shape[-1] == c["n_latents"] else float(codes.shape[-1])
    return dict(times=times, l0=l0, base_rss_kb=base)
