"""The error tree: every failure vmid expects is a `VmidError` with a message a person can act on.

    VmidError
     ├── ConfigError      vmid.yaml or a command-line flag is wrong
     ├── ManifestError    a manifest does not load, validate or plan; carries every `Problem` found
     └── StateUnreadable  the CLI finds no daemon's state under --root, or may not read it

Anything else that escapes is a bug. `BaseException`s (cancellation, KeyboardInterrupt) are never
wrapped.
"""

from __future__ import annotations

import attrs


class VmidError(Exception):
    """Root of every error vmid reports to a person instead of crashing."""


class ConfigError(VmidError):
    """The daemon configuration or a command-line flag is invalid."""


@attrs.frozen
class Problem:
    """One thing wrong with a manifest, located in its file.

    `line` and `column` are 1-based; `field` is the dotted path as written in the YAML
    (`spec.domain.devices.disks[1].disk.bus`), empty for problems with the file as a whole.
    """

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestError(VmidError):
    """A manifest is refused; `problems` lists everything wrong with it at once."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class StateUnreadable(VmidError):
    """The runtime directory is missing or closed to the caller: a reader would see nothing."""
