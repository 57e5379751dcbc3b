"""The `saekit` command. Each subcommand lives in its own module and parses its own typed config
with tyro; this file only names them. Any SaekitError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from saekit.errors import SaekitError

# name -> (one-line summary, "module:function"); the function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("Train an SAE (config file and/or flags; --resume continues a run)", "saekit.train.command:main"),
    "eval": ("Evaluate a saved SAE on held-out data; prints a table and writes JSON", "saekit.eval.command:main"),
    "verify": ("Check a store, SAE, checkpoint or run folder completely: checksums, shapes, schema, NaN", "saekit.verify:main"),
    "plot": ("Draw a run's training curves (loss terms, L0, FVU, dead fraction, LR) to PNG from metrics.jsonl",
             "saekit.report.curves:main"),
    "info": ("Show a saved SAE's config and weights summary", "saekit.info:main"),
    "export": ("Write an SAE as a SAELens or sparsify folder (--format saelens|sparsify --out DIR)",
               "saekit.interop.command:export_main"),
    "import": ("Convert a SAELens or sparsify folder into a saekit SAE folder (--out DIR)",
               "saekit.interop.command:import_main"),
    "cache": ("Harvest activations (and --grads) into an on-disk store", "saekit.data.cache_command:main"),
    "sweep": ("Train and evaluate a grid of SAEs (architectures x λ/k x widths) on shared data; table + plots", "saekit.sweep:main"),
    "features": ("What each latent responds to: firing stats, top-activating contexts, logit effects; HTML dashboard", "saekit.eval.features:main"),
    "steer-eval": ("Steer the LM with a sample of an SAE's latents: effect on target tokens vs KL", "saekit.eval.steering:main"),
    "reproduce": ("Reproduce a paper's headline results: gated, gsae, decoupled-synthetic, decoupled-lm "
                  "(--scale smoke|cpu|gpu; resumable)", "saekit.reproduce.command:main"),
    "demo": ("The end-to-end demo run by `make demo`", "saekit.demo:main"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: saekit COMMAND [options]   (saekit COMMAND --help for every option)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (summary, _) in COMMANDS.items()]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], None]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"saekit: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        _resolve(COMMANDS[name][1])(rest)
    except SaekitError as e:
        print(f"saekit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("saekit: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
