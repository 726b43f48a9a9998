"""`vmid completion fish`: fish's `complete` rules for vmid's verbs (described by their help),
their flags and the names of existing VMIs (asked of `vmid get -o name` with the --root, --config
and -n typed), made from the parser as the bash script is."""

from __future__ import annotations

import argparse

from vmid.cli.common import Commands

#: Functions the rules call: the verb typed (the first word not a flag or a global flag's
#: value), the global flags typed (for `vmid get`), and the VMI names.
_FUNCTIONS = r"""# vmid fish completion: vmid completion fish | source
function __vmid_verb
    set -l words (commandline -opc)
    set -e words[1]
    while set -q words[1]
        switch $words[1]
            case --root --config -n --namespace
                set -e words[1]
            case '-*'
            case '*'
                echo $words[1]
                return
        end
        set -e words[1]
    end
end
function __vmid_is
    contains -- (__vmid_verb) $argv
end
function __vmid_no_verb
    set -l verb (__vmid_verb)
    test -z "$verb"
end
function __vmid_scope
    set -l words (commandline -opc)
    set -e words[1]
    while set -q words[2]
        if contains -- $words[1] --root --config -n --namespace
            echo $words[1]
            echo $words[2]
            set -e words[1]
        end
        set -e words[1]
    end
end
function __vmid_names
    set -l vmid (commandline -opc)[1]
    $vmid get -o name (__vmid_scope) 2>/dev/null | string replace -r '.*/' ''
end
complete -c vmid -f
"""


def script(commands: Commands, flags: argparse.ArgumentParser) -> str:
    rules = [*_options(flags, "-n __vmid_no_verb ")]
    helps = {a.dest: a.help for a in commands._choices_actions}
    for verb, parser in commands.choices.items():
        rules.append(f"complete -c vmid -n __vmid_no_verb -a {verb} -d {_quote(helps[verb])}")
        # Its own options and the global flags it means something by (the others: hidden).
        rules.extend(_options(parser, f"-n '__vmid_is {verb}' "))
        rules.extend(_positionals(verb, parser))
    return _FUNCTIONS + "\n".join(rules) + "\n"


def _options(parser: argparse.ArgumentParser, condition: str) -> list[str]:
    """A rule per option `parser` offers (not those it only accepts: a global flag meaning
    nothing to that verb)."""
    rules = []
    for action in parser._actions:
        names = action.option_strings
        if not names or action.help == argparse.SUPPRESS:
            continue
        spelled = " ".join(f"-l {o[2:]}" if o.startswith("--") else f"-s {o[1:]}" for o in names)
        rules.append(f"complete -c vmid {condition}{spelled}{_value(action)}{_described(action)}")
    return rules


def _value(action: argparse.Action) -> str:
    """What an option's value completes to: its choices, a directory, a file, or nothing."""
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return f" -x -a {_quote(' '.join(str(c) for c in action.choices))}"
    if action.dest == "root":
        return " -x -a '(__fish_complete_directories)'"
    if action.dest in ("config", "filename", "files"):
        return " -r -F"
    return " -x"


def _positionals(verb: str, parser: argparse.ArgumentParser) -> list[str]:
    """What a verb's arguments complete to: VMI names, its subcommands or choices, or files."""
    condition = f"-n '__vmid_is {verb}'"
    for action in parser._actions:
        if action.option_strings:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return [
                f"complete -c vmid {condition} -a {name} -d {_quote(helps.get(name))}"
                for name in action.choices
            ]
        if action.choices is not None:
            words = " ".join(str(c) for c in action.choices)
            return [f"complete -c vmid {condition} -a {_quote(words)}"]
        if action.dest in ("name", "names"):
            return [f"complete -c vmid {condition} -a '(__vmid_names)'"]
    return [f"complete -c vmid {condition} -F"]


def _described(action: argparse.Action) -> str:
    return f" -d {_quote(action.help)}" if action.help else ""


def _quote(text: str | None) -> str:
    """`text` as one fish word: single-quoted, its first clause only (a menu's line)."""
    short = (text or "").split("; ")[0]
    return "'" + short.replace("\\", "\\\\").replace("'", "\\'") + "'"
