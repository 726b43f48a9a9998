"""`vmid completion bash|zsh|fish`: a shell completion script for vmid's verbs, their flags and
the names of existing VMIs (asked of `vmid get -o name` as one types, with the --root and -n
typed); fish's is made by fishcompletion.py."""

from __future__ import annotations

import argparse

from vmid.cli import common
from vmid.cli.common import EXIT_OK, Commands

EXAMPLES = """examples:
  source <(vmid completion bash)                      # in this shell
  vmid completion bash > /etc/bash_completion.d/vmid  # in every new one
  source <(vmid completion zsh)                       # zsh, through bashcompinit
  vmid completion fish | source                       # fish, in this shell
  vmid completion fish > ~/.config/fish/completions/vmid.fish   # fish, in every new one
"""

#: The script; VERBS, GLOBAL, the flag cases, NAMED and SUBVERBS are filled in from the parser.
_SCRIPT = r"""# vmid bash completion: source <(vmid completion bash)
_vmid_names() {
    "${COMP_WORDS[0]}" get -o name "${_vmid_scope[@]}" 2>/dev/null | sed 's|.*/||'
}
_vmid() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" verb="" i
    _vmid_scope=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --root|--config|-n|--namespace)
                _vmid_scope+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}"); ((i++)) ;;
            -*) ;;
            *) [[ -z "$verb" ]] && verb="${COMP_WORDS[i]}" ;;
        esac
    done
    case "$prev" in
        --root) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --config|-f|--filename) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -z "$verb" ]]; then
        COMPREPLY=($(compgen -W "@VERBS@ @GLOBAL@" -- "$cur")); return
    fi
    if [[ "$cur" == -* ]]; then
        case "$verb" in
@FLAGS@
        esac
        return
    fi
    case "$verb" in
        @NAMED@) COMPREPLY=($(compgen -W "$(_vmid_names)" -- "$cur")) ;;
        image) COMPREPLY=($(compgen -W "@SUBVERBS@" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}
complete -F _vmid vmid
"""
_ZSH = "autoload -U +X bashcompinit && bashcompinit\n"


def register(commands: Commands, flags: argparse.ArgumentParser) -> None:
    completion = commands.add_parser(
        "completion",
        parents=[common.flags_for(flags)],  # accepted, meaning nothing here: not offered
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a script completing vmid's verbs, flags and VMI names.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    completion.set_defaults(run=_completion, commands=commands, global_flags=flags)


def _completion(args: argparse.Namespace) -> int:
    if args.shell == "fish":
        from vmid.cli import fishcompletion  # here: only this verb needs it

        print(fishcompletion.script(args.commands, args.global_flags), end="")
        return EXIT_OK
    script = script_for(args.commands, args.global_flags)
    print((_ZSH if args.shell == "zsh" else "") + script, end="")
    return EXIT_OK


def script_for(commands: Commands, flags: argparse.ArgumentParser) -> str:
    verbs = commands.choices
    cases = [
        f'            {verb}) COMPREPLY=($(compgen -W "{" ".join(_flags(parser))}" -- "$cur")) ;;'
        for verb, parser in verbs.items()
    ]
    named = [verb for verb, parser in verbs.items() if _takes_names(parser)]
    subverbs = [
        name
        for action in verbs["image"]._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]
    return (
        _SCRIPT.replace("@VERBS@", " ".join(verbs))
        .replace("@GLOBAL@", " ".join(_flags(flags)))
        .replace("@FLAGS@", "\n".join(cases))
        .replace("@NAMED@", "|".join(named))
        .replace("@SUBVERBS@", " ".join(subverbs))
    )


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """The options `parser` offers (not those it only accepts: a global flag meaning nothing)."""
    offered = (a for a in parser._actions if a.help != argparse.SUPPRESS)
    return [o for action in offered for o in action.option_strings]


def _takes_names(parser: argparse.ArgumentParser) -> bool:
    return any(a.dest in ("name", "names") and not a.option_strings for a in parser._actions)
