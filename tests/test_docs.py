"""Docs that cannot drift: every `scratchnets` command quoted in the README and docs/ runs, word
for word, from the project root, and prints what the quote shows.

A quote is a fenced block whose first line is ``$ scratchnets ...`` (a trailing backslash
continues the command). Every other line of the block must appear in the command's output
(stdout, then stderr), in order, with runs of spaces compared as one; a line that starts with
``...`` marks lines left out of the quote. The command runs in a scratch folder beside a link to
``../shared`` (so paths like ``../shared/weights/...`` work as written and files it writes land in
the scratch folder), one folder per document, shared by its quotes in their order (a file a quote
writes, ``export keras ... -o FILE``, is there for the quotes after it); quotes that read
``../shared`` are skipped where it is absent.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: subcommands whose quotes run here: everything but training (minutes)
RUN = {"explain", "predict", "summary", "verify", "gradcheck", "export"}


def quotes() -> list[tuple[str, str, list[str]]]:
    """(where, the command, the quoted output lines) of every quote in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
            lines = match.group(1).splitlines()
            if not lines or not lines[0].startswith("$ scratchnets "):
                continue
            command = lines.pop(0)[2:]
            while command.endswith("\\"):
                command = command[:-1] + " " + lines.pop(0).strip()
            where = f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 2}"
            found.append((where, command, lines))
    return found


def normalized(line: str) -> str:
    return " ".join(line.split())


def missing_lines(quoted: list[str], output: str) -> list[str]:
    """The quoted lines not found in ``output`` in order (each within one output line)."""
    lines, at, missing = [normalized(line) for line in output.splitlines()], 0, []
    for want in map(normalized, quoted):
        if not want or want.startswith("..."):
            continue
        found = next((k for k in range(at, len(lines)) if want in lines[k]), None)
        if found is None:
            missing.append(want)
        else:
            at = found + 1
    return missing


ALL = quotes()


def test_the_docs_quote_commands():
    assert len(ALL) >= 8, [q[0] for q in ALL]  # README and docs/explain.md at least


#: document -> the scratch folder its quotes run in
WORKDIRS: dict[str, Path] = {}


def workdir_of(where: str, tmp_path_factory) -> Path:
    """The document's scratch folder ``project`` (made on its first quote), beside ``shared``."""
    document = where.rsplit(":", 1)[0]
    if document not in WORKDIRS:
        root = tmp_path_factory.mktemp("docs")
        (root / "project").mkdir()
        if SHARED.is_dir():
            (root / "shared").symlink_to(SHARED)
        WORKDIRS[document] = root / "project"
    return WORKDIRS[document]


@pytest.mark.parametrize(("where", "command", "quoted"), ALL, ids=[q[0] for q in ALL])
def test_a_quoted_command_prints_what_the_quote_shows(where, command, quoted, tmp_path_factory):
    args = shlex.split(command)[1:]
    if args[0] not in RUN:
        pytest.skip(f"{args[0]} takes minutes: not run here")
    if "../shared" in command and not SHARED.is_dir():
        pytest.skip("../shared is not on this machine")
    workdir = workdir_of(where, tmp_path_factory)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from scratchnets.cli import main; sys.exit(main())",
         *args],
        capture_output=True, text=True, cwd=workdir, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    missing = missing_lines(quoted, done.stdout + done.stderr)
    assert not missing, (
        f"{where}: `{command}` no longer prints {missing[:3]} (exit {done.returncode});\n"
        f"it printed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    )


def test_missing_lines_checks_order_and_abridgement():
    output = "a  b\nc\nd\n"
    assert missing_lines(["a b", "...", "d"], output) == []
    assert missing_lines(["d", "c"], output) == ["c"]  # out of order
    assert missing_lines(["e"], output) == ["e"]
