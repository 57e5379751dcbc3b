"""Training: schedules, initialisation, dead-latent tracking and resampling, checkpoints, the loop.

The package itself is callable: ``saekit.train(source, cfg, **overrides)`` is ``saekit.api.train``
(a function named ``train`` beside a package named ``train`` would hide one or the other)."""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from saekit.api import train

        return train(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from saekit.api import train

        return inspect.signature(train)


sys.modules[__name__].__class__ = _CallablePackage
