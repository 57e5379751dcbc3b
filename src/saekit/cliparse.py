"""tyro's parser with its errors as one line: a bad flag (an unknown option, a value of the wrong type)
becomes a SaekitError, which the CLI prints as one ``saekit: error:`` line with exit code 2."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

import tyro

from saekit.errors import SaekitError

_BOX = re.compile(r"[╭╮╰╯│─┃━┏┓┗┛]+")


def cli(cls: Any, *, args: list[str], prog: str, **kwargs: Any) -> Any:
    """``tyro.cli`` for ``saekit COMMAND``; --help prints as usual."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return tyro.cli(cls, args=args, prog=prog, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise SaekitError(_one_line(buf.getvalue(), prog)) from None


def _one_line(text: str, prog: str) -> str:
    lines = [_BOX.sub(" ", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("-=+|_ ")]  # rules in plain-text mode
    if not lines:
        return f"bad arguments; see {prog} --help"
    body = [line for line in lines[1:] if not line.startswith(("For full helptext", "Argument helptext"))]
    message = body[0] if body else lines[0]
    if message.endswith(":") and len(body) > 1:  # "Missing from saekit eval:" then what is missing
        message = f"{message} {body[1]}"
    if "Perhaps you meant:" in body:
        i = body.index("Perhaps you meant:")
        if i + 1 < len(body):
            message += f" (perhaps you meant {body[i + 1].split()[0]})"
    return f"{message}; see {prog} --help"
