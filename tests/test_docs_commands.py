"""Every `gvu` command that README.md, the model card and docs/*.md show exists, and so does each long flag after it.

The docs are read as a user reads them: fenced code blocks (a trailing backslash joins the next line) and inline
code spans (which may wrap across a line break). Wherever `gvu COMMAND [SUBCOMMAND]` (or `gvu.cli COMMAND`, as in
`python -m gvu.cli train`) appears there, `gvu COMMAND [SUBCOMMAND] --help` must succeed, and each `--flag` between
the command and the end of its shell command (`#`, `|`, `&&`, `;`, or the next `gvu`) must appear in that help.
So a renamed command or flag breaks the build until the docs follow it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gvu.cli import build_parser

REPO = Path(__file__).resolve().parent.parent

# `gvu` as a word (not gvu/ or gvu.models), optionally `gvu.cli`, then the command word.
_COMMAND = re.compile(r"(?<![\w/.-])gvu(?:\.cli)?[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9-]*))?")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


@dataclass
class DocCommand:
    """One `gvu` command as written in a doc: where, which words, and the long flags written after it."""
    path: str
    line: int
    command: str
    subcommand: str | None  # the word after the command; whether it is a subcommand depends on the parser
    flags: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _line_at(starts: list[tuple[int, int]], offset: int) -> int:
    """The doc line holding character `offset` of a joined text; `starts` is [(offset, line)] ascending."""
    return max(line for start, line in starts if start <= offset)


def commands_in_text(text: str, path: str, starts: list[tuple[int, int]]) -> list[DocCommand]:
    """The gvu commands in one piece of shell text (joined code lines or an inline span).

    starts: [(offset in text, doc line)] for each doc line the text was joined from, ascending.
    """
    found = []
    offset = 0
    for segment in re.split(r"((?:^|\s)#|\||&&|;)", text):
        matches = list(_COMMAND.finditer(segment))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(segment)
            flags = _FLAG.findall(segment[m.end(1):end])
            found.append(DocCommand(path, _line_at(starts, offset + m.start()), m.group(1), m.group(2), flags))
        offset += len(segment)
    return found


def commands_in_markdown(markdown: str, path: str) -> list[DocCommand]:
    """Every gvu command in the fenced code blocks and inline code spans of a markdown text."""
    found: list[DocCommand] = []
    prose: list[tuple[int, str]] = []  # (line number, line) outside fences, for inline spans
    in_fence = False
    pending, pending_starts = "", []
    for number, line in enumerate(markdown.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            pending, pending_starts = "", []
            continue
        if not in_fence:
            prose.append((number, line))
            continue
        if line.lstrip().startswith("gvu: "):  # a message the command prints (gvu: error: ...), not a command
            continue
        pending_starts.append((len(pending), number))
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found += commands_in_text(pending + line, path, pending_starts)
        pending, pending_starts = "", []
    # Inline spans: scan the prose as one text, mapping offsets back to line numbers.
    starts, joined = [], ""
    for number, line in prose:
        starts.append((len(joined), number))
        joined += line + "\n"
    for m in _INLINE.finditer(joined):
        span_starts = [(max(0, start - m.start(1)), line) for start, line in starts if start < m.end(1)]
        found += commands_in_text(m.group(1).replace("\n", " "), path, span_starts)
    return found


def doc_files() -> list[Path]:
    return [REPO / "README.md", REPO / "models" / "nano-janus" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def help_text(words: list[str]) -> str | None:
    """`gvu WORDS --help` in-process: its text, or None when argparse rejects the words."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args([*words, "--help"])
        except SystemExit as e:
            return out.getvalue() if e.code == 0 else None
    return None


@functools.cache
def subcommand_names(command: str) -> frozenset[str]:
    """The subcommands of `gvu COMMAND` (empty when it has none)."""
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # argparse keeps sub-parsers only here
        sub = action.choices.get(command)
        if sub is not None and sub._subparsers is not None:
            return frozenset(name for a in sub._subparsers._group_actions for name in a.choices)
    return frozenset()


def problems(commands: list[DocCommand]) -> list[str]:
    """One line per doc command that does not exist or names a flag its --help does not show."""
    helps: dict[tuple[str, ...], str | None] = {}
    report = []
    for doc in commands:
        subs = subcommand_names(doc.command)
        words = (doc.command, doc.subcommand) if subs and doc.subcommand else (doc.command,)
        if words not in helps:
            helps[words] = help_text(list(words))
        shown = "gvu " + " ".join(words)
        if helps[words] is None:
            report.append(f"{doc.where}: `{shown}` does not exist (`{shown} --help` fails)")
            continue
        for flag in doc.flags:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[words]):
                report.append(f"{doc.where}: `{shown}` has no flag {flag} in its --help")
    return report


def all_doc_commands() -> list[DocCommand]:
    found = []
    for path in doc_files():
        found += commands_in_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    return found


SAMPLE = """Run `gvu train --preset nano --out
runs/x` or `gvu world prompts --suite geneval`.

```bash
gvu pretrain --preset nano \\
    --out runs/p            # resumes; see gvu score --image
ls gvu/models | head        # a path, not a command
torchrun --nproc-per-node 2 -m gvu.cli train --preset janus-pro-1b && gvu eval runs/x --overwrite
```
Not code: gvu train --nothing. The `gvu` command.
"""


def test_the_extractor_reads_code_blocks_wrapped_spans_continuations_and_comments():
    found = [(d.line, d.command, d.subcommand, d.flags) for d in commands_in_markdown(SAMPLE, "sample.md")]
    assert sorted(found) == sorted([
        (1, "train", None, ["--preset", "--out"]),
        (2, "world", "prompts", ["--suite"]),
        (5, "pretrain", None, ["--preset", "--out"]),
        (6, "score", None, ["--image"]),
        (8, "train", None, ["--preset"]),
        (8, "eval", "runs", ["--overwrite"]),
    ])


def test_what_a_command_prints_is_not_read_as_a_command():
    sample = "```\ngvu: error: RUN is in use by another gvu process (pid 7)\ngvu train --out r\n```\n"
    assert [(d.line, d.command) for d in commands_in_markdown(sample, "doc.md")] == [(3, "train")]


def test_a_missing_command_or_flag_is_reported_with_its_file_and_line():
    sample = "```\ngvu no-such-command --x\ngvu train --no-such-flag --out r\ngvu world no-such-sub\n```\n"
    report = problems(commands_in_markdown(sample, "doc.md"))
    assert report == [
        "doc.md:2: `gvu no-such-command` does not exist (`gvu no-such-command --help` fails)",
        "doc.md:3: `gvu train` has no flag --no-such-flag in its --help",
        "doc.md:4: `gvu world no-such-sub` does not exist (`gvu world no-such-sub --help` fails)",
    ]


def test_the_docs_show_gvu_commands_at_all():
    # guards the two tests below against passing on an extractor that finds nothing
    commands = {d.command for d in all_doc_commands()}
    assert {"train", "pretrain"} <= commands


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_gvu_command_and_long_flag_in_the_doc_exists(path):
    commands = commands_in_markdown(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    report = problems(commands)
    assert not report, "commands or flags in the docs that `gvu --help` does not know:\n" + "\n".join(report)
