"""One exception root for everything egressgw raises on purpose.

Every message is written for the person who has to act on it: it says what
was wrong and what to change. No message ever carries a secret value.
"""

from __future__ import annotations

from dataclasses import dataclass


class EgressgwError(Exception):
    """Root of every error egressgw raises deliberately."""


class ConfigError(EgressgwError):
    """The gateway config file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a policy file: where it is and how to fix it."""

    file: str
    line: int  # 1-based; 0 when the problem is about the whole file
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.message}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class PolicyError(EgressgwError):
    """A policy could not be loaded. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SessionError(EgressgwError):
    """A session operation failed (unknown session, duplicate address, ...)."""


class SandboxError(EgressgwError):
    """Creating, entering or removing a sandbox namespace failed."""


class ControlAPIError(EgressgwError):
    """The control API refused a request or could not be reached."""
