"""The documentation's examples as tests: every ```python block of docs/*.md and README.md runs, and every
``cnnlab`` command in a ```bash block parses with the real argument parser, so no example rots.

A page's Python blocks run in order in one namespace (as a reader would paste them), in a fresh temporary working
folder. A block that must not run is marked by a ``<!-- no-run: reason -->`` line right above it; such opt-outs
are few and each gives its reason. The site itself (links, API references) is checked by ``make docs``
(``mkdocs build --strict``), which ``make test`` runs after the suite."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from cnnlab.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
MAX_NO_RUN = 4  # opt-outs in all pages together; a new one has to push another out or be rewritten to run

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NO_RUN = re.compile(r"<!--\s*no-run:(?P<reason>.*?)-->\s*$")


def blocks(path, lang):
    """(line, code, no-run reason or None) of each fenced ``lang`` block in a Markdown file."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match["lang"] != lang:
            continue
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        mark = NO_RUN.search(before)
        body = "".join(line[len(match["indent"]):] + "\n" for line in match["body"].splitlines())
        found.append((text.count("\n", 0, match.start()) + 1, body, mark["reason"].strip() if mark else None))
    return found


def _rel(path):
    return str(path.relative_to(ROOT))


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_rel)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code, no_run in blocks(page, "python"):
        if no_run is None:
            exec(compile(code, f"{_rel(page)}:{line}", "exec"), namespace)


def test_no_run_opt_outs_are_few_and_each_says_why():
    opt_outs = [(_rel(page), line, reason) for page in PAGES for line, _, reason in blocks(page, "python")
                if reason is not None]
    assert all(len(reason) >= 10 for _, _, reason in opt_outs), f"an opt-out without a real reason: {opt_outs}"
    assert len(opt_outs) <= MAX_NO_RUN, f"too many python blocks that do not run: {opt_outs}"


def cnnlab_commands(code):
    """The argument lists of the ``cnnlab`` commands in a bash block: `cnnlab ...`, `python -m cnnlab ...` and
    `torchrun ... -m cnnlab ...`, with comments, line continuations, `&&` chains and `&` (in the background)
    handled."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;|\||&", line.split(" #")[0] if not line.lstrip().startswith("#") else ""):
            words = shlex.split(part)
            if words[:1] == ["cnnlab"]:
                commands.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1:][:1] == ["cnnlab"]:
                commands.append(words[words.index("-m") + 2:])
    return commands


def test_the_command_finder_reads_chains_continuations_and_torchrun():
    code = "# a comment\ncnnlab data export-folder f && cnnlab train \\\n  --images f  # why\n" \
           "torchrun --nproc_per_node=2 -m cnnlab train --device cpu\nls\n"
    assert cnnlab_commands(code) == [["data", "export-folder", "f"], ["train", "--images", "f"],
                                     ["train", "--device", "cpu"]]


BASH = [(page, line, args) for page in PAGES for line, code, _ in blocks(page, "bash")
        for args in cnnlab_commands(code)]


def strict_parser():
    """The real parser, without argparse's prefix matching, so the docs spell every flag out in full."""
    parser = build_parser()
    stack = [parser]
    while stack:
        current = stack.pop()
        current.allow_abbrev = False
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser


@pytest.mark.parametrize("page, line, args", BASH, ids=[f"{_rel(p)}:{n}" for p, n, _ in BASH])
def test_bash_commands_name_real_commands_and_flags(page, line, args, capsys):
    try:
        strict_parser().parse_args(args)
    except SystemExit as exit:
        assert exit.code == 0, f"{_rel(page)}:{line}: `cnnlab {shlex.join(args)}` does not parse: " \
                               f"{capsys.readouterr().err.strip()}"


def test_a_flag_that_does_not_exist_is_caught(capsys):
    for args in (["train", "--no-such-flag"], ["train", "--epoch", "1"]):  # unknown; an abbreviation of --epochs
        with pytest.raises(SystemExit) as exit:
            strict_parser().parse_args(args)
        assert exit.value.code == 2


def test_the_readme_links_to_files_that_exist():
    """mkdocs checks the links inside docs/; the README sits outside it, so its relative links are checked here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    relative = [link for link in links if "://" not in link]
    assert relative, "the README should link to its pages"
    assert [link for link in relative if not (ROOT / link).exists()] == []
