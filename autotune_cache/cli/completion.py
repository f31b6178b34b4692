"""`autotune-cache completion bash|zsh|fish`: the shell script that completes commands, flags and choices, from
argcomplete. The script asks the CLI itself at each Tab (`complete()`, the first thing main() does), so it never
falls behind the parsers."""
from __future__ import annotations

import os

from .console import add_command

SHELLS = ("bash", "zsh", "fish")
_HOW = {"bash": 'eval "$(autotune-cache completion bash)"   # in ~/.bashrc',
        "zsh": 'eval "$(autotune-cache completion zsh)"    # in ~/.zshrc',
        "fish": "autotune-cache completion fish > ~/.config/fish/completions/autotune-cache.fish"}


def complete(parser) -> None:
    """Answer the shell's completion request and exit, when this process is one (argcomplete's _ARGCOMPLETE);
    otherwise nothing (argcomplete is not even imported)."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete
        argcomplete.autocomplete(parser)


def cmd_completion(args) -> int:
    import argcomplete
    print(argcomplete.shellcode(["autotune-cache"], shell=args.shell), end="")
    return 0


def add_commands(sub) -> None:
    p = add_command(sub, "completion", "print the shell script that completes commands and flags on Tab",
                    details="Load it once per shell session, or install it as below. It completes every command, "
                            "subcommand, flag and choice (--progress, --selection, the shell names).",
                    examples=tuple(_HOW.values()))
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="the shell to complete in: " + ", ".join(SHELLS))
    p.set_defaults(func=cmd_completion)
