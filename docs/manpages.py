"""Write the man pages vmid(8) (from the command's own parser: every verb's help, options and
examples) and vmid.yaml(5) (from conf/vmid.yaml, every key with its default and comment), so
they never drift from what `vmid --help` and the documented defaults say.

    python docs/manpages.py MANDIR   # writes MANDIR/man8/vmid.8 and MANDIR/man5/vmid.yaml.5
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from vmid import cli
from vmid.cli import version

CONFIG = Path(__file__).resolve().parent.parent / "conf" / "vmid.yaml"


def roff(text: str) -> str:
    """Text safe in roff: backslashes doubled, a line never starting with a control dot."""
    lines = text.replace("\\", "\\e").splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _header(name: str, section: int, title: str) -> list[str]:
    day = datetime.date.today().isoformat()
    return [f'.TH {name.upper()} {section} {day} "vmid {version.version()}" "{title}"']


def vmid_8() -> str:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = _header("vmid", 8, "System Administration")
    lines += [".SH NAME", "vmid \\- run KubeVirt VirtualMachineInstance manifests with QEMU"]
    lines += [
        ".SH SYNOPSIS",
        ".B vmid",
        "[\\-\\-root DIR] [\\-\\-config FILE] [\\-n NS] COMMAND ...",
    ]
    lines += [".SH DESCRIPTION", roff(parser.description or "")]
    lines += [".SH GLOBAL OPTIONS", *_options(parser)]
    lines += [".SH COMMANDS"]
    for verb, sub in commands.choices.items():
        usage = sub.format_usage().removeprefix("usage: ").strip()
        lines += [".SS " + verb, ".nf", roff(usage), ".fi", roff(sub.description or "")]
        lines += _options(sub, skip={"-h", "--root", "--config", "-n"})
        if sub.epilog:
            lines += [".PP", ".nf", roff(sub.epilog), ".fi"]
    lines += [
        ".SH EXIT STATUS",
        "0 done; 1 failed (a message says what and why); 2 a usage error; 130 interrupted.",
        ".SH FILES",
        ".TP\n/etc/vmid/instances/\nthe spool: the manifests the daemon runs",
        ".TP\n/etc/vmid/vmid.yaml\nthe daemon's configuration, see vmid.yaml(5)",
        ".TP\n/run/vmid/, /var/lib/vmid/, /var/log/vmid/\nstatus and sockets, state, logs",
        ".SH SEE ALSO",
        "vmid.yaml(5), kubectl(1), qemu-system-x86_64(1)",
    ]
    return "\n".join(lines) + "\n"


def _options(parser: argparse.ArgumentParser, skip: set[str] | None = None) -> list[str]:
    lines = []
    for action in parser._actions:
        names = action.option_strings or [action.metavar or action.dest]
        if isinstance(action, argparse._SubParsersAction) or set(names) & (skip or set()):
            continue
        if action.help not in (None, argparse.SUPPRESS) and not set(names) & {"-h", "--help"}:
            lines += [
                ".TP",
                "\\fB" + roff(", ".join(str(n) for n in names)) + "\\fR",
                roff(action.help),
            ]
    return lines


def vmid_yaml_5() -> str:
    lines = _header("vmid.yaml", 5, "File Formats")
    lines += [".SH NAME", "vmid.yaml \\- the vmid daemon's configuration"]
    lines += [
        ".SH DESCRIPTION",
        "/etc/vmid/vmid.yaml (ROOT/etc/vmid/vmid.yaml with vmid \\-\\-root ROOT) sets the "
        "daemon's configuration; every key is optional. SIGHUP (systemctl reload vmid) "
        "re-reads it. Below, every key with its built-in default and what it means.",
        ".SH KEYS",
        ".nf",
        roff(CONFIG.read_text()),
        ".fi",
        ".SH SEE ALSO",
        "vmid(8)",
    ]
    return "\n".join(lines) + "\n"


def write(mandir: Path) -> None:
    for section, name, text in ((8, "vmid.8", vmid_8()), (5, "vmid.yaml.5", vmid_yaml_5())):
        (mandir / f"man{section}").mkdir(parents=True, exist_ok=True)
        (mandir / f"man{section}" / name).write_text(text)


def main() -> None:
    write(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
