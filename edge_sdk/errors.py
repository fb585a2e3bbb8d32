"""Error types. Every error the CLI shows is one of these: one line, naming the file,
the tensor where relevant, and what to do about it. Exit codes: 2 bad input/usage, 1 a check
that ran and failed."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

DISTRIBUTION = "gemma-edge-sdk"    # our name on PyPI (import package edge_sdk, command edge-sdk); "edge-sdk"
                                   # there is an unrelated project: never tell anyone to install that


class EdgeSdkError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for it."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | PathLike | None = None,
                 tensor: str | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.tensor = tensor
        self.fix = fix
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.path:
            parts.append(self.path)
        if self.tensor:
            parts.append(f"tensor '{self.tensor}'")
        head = ": ".join(parts)
        msg = f"{head}: {self.detail}" if head else self.detail
        if self.fix:
            msg += f" (fix: {self.fix})"
        return msg


class InputError(EdgeSdkError):
    """The input (file, config, flag) is malformed or inconsistent."""


class CheckpointError(InputError):
    """A checkpoint file or directory is malformed."""


class ConfigError(InputError):
    """config.json is malformed, unsupported, or disagrees with the weights."""


class RecipeError(InputError):
    """A quantization recipe is malformed or asks for something we refuse to emit."""


class DeviceError(EdgeSdkError):
    """An adb device failed or disappeared."""


class CheckFailed(EdgeSdkError):
    """A check ran and failed (budget, quality, non-finite outputs)."""

    exit_code = 1


def install_fix(extra: str) -> str:
    """How to install the optional ``extra`` of *this* code: from its checkout when it runs from
    one (an editable install), else the distribution by its own name."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "edge_sdk" / "__init__.py").is_file():
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install '{DISTRIBUTION}[{extra}]'"
