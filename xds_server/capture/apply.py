"""Installing and removing the capture rules of `rules` in the current network namespace.

`install` is idempotent, so an init container that restarts (or a test that
applies twice) ends with exactly one copy of every rule:

1. delete the jumps from PREROUTING and OUTPUT into our chains, each until
   iptables says there is none left;
2. `iptables-restore --noflush` the generated text: declaring our chains there
   creates them or empties them, then the rules (jumps included) are appended
   in one atomic commit, leaving every other chain and table as it was.

`uninstall` deletes the jumps, then empties and deletes our chains.

Commands run through a `CommandRunner`, so tests can check exactly what would
be run without root; `SubprocessRunner` is the real one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from xds_server.capture.rules import (
    CaptureConfig,
    IPFamily,
    loopback_address_commands,
    remove_chain_commands,
    remove_jump_commands,
    restore_text,
)

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0
MAX_JUMP_COPIES = 32
"""Bound on deleting duplicate jumps (a healthy namespace has at most one of each)."""
XTABLES_WAIT = ["-w", "5"]
"""Wait up to 5 s for the xtables lock another process (kube-proxy, CNI) may hold."""


class CaptureError(RuntimeError):
    """A command failed while installing the rules; the message holds its output."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult: ...


class SubprocessRunner:
    """Runs commands for real; a missing executable becomes a failed `CommandResult`."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        if shutil.which(argv[0]) is None:
            return CommandResult(127, "", f"{argv[0]}: command not found")
        completed = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)


def install(
    config: CaptureConfig,
    families: Iterable[IPFamily] = (IPFamily.IPV4,),
    runner: CommandRunner | None = None,
) -> dict[IPFamily, str]:
    """Install the rules for each family; returns the restore text applied per family."""
    run = runner or SubprocessRunner()
    applied: dict[IPFamily, str] = {}
    for family in families:
        for argv in loopback_address_commands(family):
            _check(run, argv)
        _remove_jumps(run, family)
        text = restore_text(config, family)
        _check(run, [family.iptables_restore, "--noflush", *XTABLES_WAIT], stdin=text)
        logger.info("installed %s capture rules", family.iptables)
        applied[family] = text
    return applied


def uninstall(
    families: Iterable[IPFamily] = (IPFamily.IPV4,), runner: CommandRunner | None = None
) -> None:
    """Remove our jumps and chains; whatever is already gone is skipped."""
    run = runner or SubprocessRunner()
    for family in families:
        _remove_jumps(run, family)
        for argv in remove_chain_commands(family):
            run([*argv, *XTABLES_WAIT])
        logger.info("removed %s capture rules", family.iptables)


def _remove_jumps(run: CommandRunner, family: IPFamily) -> None:
    for argv in remove_jump_commands(family):
        for _ in range(MAX_JUMP_COPIES):
            if run([*argv, *XTABLES_WAIT]).returncode != 0:
                break
        else:
            raise CaptureError(f"more than {MAX_JUMP_COPIES} copies of: {' '.join(argv)}")


def _check(run: CommandRunner, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
    result = run(argv, stdin)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise CaptureError(f"{' '.join(argv)} failed ({result.returncode}): {output}")
    return result
