"""Help for every command (issues #27, #30): each option says what it does and its default, and
every command's --help, in a fresh process, loads no heavy library and returns fast."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ckksnet.deploy.cli import _every_parser, build_parser

HEAVY = ("torch", "openfhe", "numpy", "ray", "fastapi", "uvicorn", "httpx")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path, e.g. ('query', 'upload'), the top level included as ()."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, path + (name,))
    return found


def _has_a_default(action: argparse.Action) -> bool:
    """A default worth saying: not unset, not an off switch, not an empty list (0 counts)."""
    empty = (None, False, True, argparse.SUPPRESS)
    return not any(action.default is e for e in empty) and action.default != []


def test_every_option_says_what_it_does_and_its_default():
    missing, unsaid = [], []
    for parser in _every_parser(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(name)
            elif (action.option_strings and _has_a_default(action)
                  and "default" not in formatter._expand_help(action)):
                unsaid.append(name)
    assert not missing, f"options without a help text: {missing}"
    assert not unsaid, f"options whose help does not give the default: {unsaid}"


def test_every_command_help_opens_with_what_the_command_does():
    """``ckksnet plan --help`` says what plan does, in the words of ``ckksnet --help``'s list."""
    parser = build_parser()
    for path in _commands(parser)[1:]:
        sub = parser
        for name in path:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        text = sub.format_help()
        assert sub.description and sub.description.rstrip(".").lower() in " ".join(text.split()).lower(), path


def test_the_default_of_zero_is_said_and_an_off_switch_is_not():
    train = next(p for p in _every_parser(build_parser()) if p.prog == "ckksnet train")
    text = " ".join(train.format_help().split())
    assert "augmentation (default 0)" in text
    assert "no bf16 autocast (default" not in text


def test_every_command_help_loads_no_heavy_library():
    """All --help pages in one fresh process; none may pull in torch, OpenFHE, numpy, Ray or the
    web stack (issue #30: help took 4-10 s and 687 MB with torch imported up front)."""
    commands = [list(c) for c in _commands(build_parser())]
    code = ("import sys\nfrom ckksnet.deploy.cli import main\n"
            f"for argv in {commands!r}:\n"
            "    try:\n        main(argv + ['--help'])\n    except SystemExit:\n        pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("usage: ckksnet") == len(commands)
    assert out.stdout.splitlines()[-1] == "LOADED []"


def test_ckksnet_help_as_a_whole_process_is_fast():
    """CPU time of `python -m ckksnet.deploy.cli --help`, interpreter start included: measured
    0.08-0.09 s on the 2-core development machine (the issue asks for under 1 s; with torch up
    front it was 4-10 s, and importing torch alone takes 1.6 CPU seconds). CPU time, not wall
    time: a loaded machine makes the wait longer, not the work."""
    proc = subprocess.Popen([sys.executable, "-m", "ckksnet.deploy.cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = usage.ru_utime + usage.ru_stime
    print(f"ckksnet --help: {seconds:.2f} CPU s")
    assert proc.returncode == 0 and "usage: ckksnet" in out
    assert seconds < 1.0
