"""Hydra's own errors about the command line, as one ``error:`` sentence instead of its report.

An unknown option (``model=cnnn``), an unknown key (``optimizer.lrr=0.1``) or an override Hydra
cannot parse is normal use; the sentence names what was typed, the nearest valid name and the
valid choices. docs/reliability.md lists the cases and the tests that check them.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.override_parser.types import Quote, QuotedString
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException

from mnist_lab import CONF_DIR
from mnist_lab.cli.console import first_line
from mnist_lab.cli.sweep_start import forget_unstarted


@contextmanager
def hydra_errors_as_sentences() -> Iterator[None]:
    """Print Hydra's composition errors as one ``error:`` line and exit 1, without a traceback.

    Hydra prints its own multi-line report unless HYDRA_FULL_ERROR=1, in which case it raises;
    we set it so that we can rephrase. A user who sets HYDRA_FULL_ERROR=1 gets Hydra's full
    traceback, as Hydra documents.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except HydraException as error:
        forget_unstarted()  # a --multirun refused at start: its corrected command is not a second sweep
        print(f"error: {hydra_error_sentence(error, sys.argv[1:])}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # anything else before a job starts: one line, traceback on request
        forget_unstarted()
        nulled = [a.partition("=")[0] for a in sys.argv[1:] if a.endswith("=null") and "." not in a]
        if "Config group override must be" in str(error) and nulled:  # model=null
            print(f"error: {group_not_set(nulled[0])}", file=sys.stderr)
        else:
            print(f"error: {first_line(error)} (HYDRA_FULL_ERROR=1 shows where)", file=sys.stderr)
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


# Keys that moved: an old command gets the new name instead of "not a key".
MOVED = {"trainer.cuda_graph": "step.cuda_graph", "early_stopping.patience": "callbacks.early_stopping.patience"}


def group_not_set(group: str) -> str:
    """The sentence for a config group that ``~group`` or ``group=null`` took away."""
    options = sorted(p.stem for p in (CONF_DIR / group.lstrip("+~")).glob("*.yaml"))
    return (
        f"{group} is not set (an override such as ~{group} or {group}=null removed it); "
        f"choose one with {group}=<option>: {', '.join(options)}."
    )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def hydra_error_sentence(error: HydraException, argv: list[str]) -> str:
    """One sentence for Hydra's errors about the command line; its first line otherwise."""
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or ""):
        group, option = error.missing_cfg_file.rsplit("/", 1)
        options = list(error.options or [])
        if not options:
            return f"{group}={option} is not an option: conf/{group}/ holds no config files yet."
        return (
            f"{group}={option} is not an option{_did_you_mean(option, options)}; choose one of: {', '.join(options)}."
        )
    if isinstance(error, OverrideParseException):
        reason = str(error.message).splitlines()[0]
        key, equals, value = str(error.override).partition("=")
        if equals and not value.lstrip().startswith(("[", "{")):
            # Hydra's grammar takes no ( , = # & or non-ASCII letter unquoted, whatever the shell
            # did: the value needs Hydra's quotes, inside the shell's.
            quoted = override_for_shell(key.strip(), value)
            return (
                f"cannot parse the override {error.override!r} ({reason}); quote the value "
                f"for Hydra inside the shell's quotes: {quoted}."
            )
        return (
            f"cannot parse the override {error.override!r} ({reason}); quote lists "
            "and strings for the shell, e.g. 'model.hidden=[256,128]'."
        )
    for old, new in MOVED.items():
        typed = [a.partition("=")[2] for a in argv if a.lstrip("+~").startswith(f"{old}=")]
        if typed:
            return f"{old} is now {new}; write {new}={typed[0]}."
    cause = error.__cause__
    if isinstance(error, InstantiationException) and isinstance(cause, ValueError):
        return str(cause)  # a plugin's own sentence (hydra.launcher.pack_size=0), not Hydra's wrapping
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if full_key and parent is not None and hasattr(parent, "keys"):
        keys = [k for k in parent.keys() if not str(k).startswith("_") and k != "hydra"]
        where = full_key.rpartition(".")[0]
        typed = [a.partition("=")[2] for a in argv if a.lstrip("+~").startswith(f"{full_key}=")]
        value = typed[0] if typed else "..."
        hint = _did_you_mean(str(cause.key), keys)
        if not where:
            return f"{full_key} is neither a config group nor a key{hint}; they are: {', '.join(keys)}."
        if {"-m", "--multirun"} & set(argv):  # +key fails too: the sweep's base config lacks it
            return (
                f"{full_key} is not a key of {where}{hint} as --multirun first composes it, "
                "without the swept options; to set it in every job, write "
                f"++{full_key}={value}."
            )
        return (
            f"{full_key} is not a key of {where}{hint}; its keys are: {', '.join(keys)}. "
            f"To add a key on purpose, write +{full_key}={value}."
        )
    return re.sub(r"\s+", " ", str(error)).strip()


# What Hydra's override grammar takes unquoted in a value (a path's usual characters); inner
# spaces too, but not leading or trailing ones, which it strips.
_PLAIN_VALUE = re.compile(r"[\w/.+@%:-]([\w/.+@%: -]*[\w/.+@%:-])?", flags=re.ASCII)


def override_for_shell(key: str, value: str) -> str:
    """``key=value`` as one shell word that Hydra reads back as the string ``value``: quoted
    for Hydra where its grammar needs it (``(``, ``,``, ``=``, ``#``, ``~``, non-ASCII...),
    then for the shell, e.g. ``"hydra.run.dir='runs/ü (1)'"``."""
    if _PLAIN_VALUE.fullmatch(value) and value.lower() not in ("null", "true", "false"):
        return shlex.quote(f"{key}={value}")
    override = f"{key}={QuotedString(text=value, quote=Quote.single).with_quotes()}"
    if not any(c in override for c in '"$`\\!'):
        return f'"{override}"'
    return shlex.quote(override)
