"""benchmarks/ and experiments/ are packages that run as `python -m benchmarks.X` from the repo root: every module
imports without touching sys.path, the ones with a command line answer --help, and every `python -m benchmarks.X` or
`experiments.X` command that README.md, the model card and docs/*.md show names a module and flags it has."""

import functools
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(f"{folder}.{p.stem}" for folder in ("benchmarks", "experiments")
                 for p in (REPO / folder).glob("*.py") if p.stem != "__init__")
DOCS = [REPO / "README.md", REPO / "models" / "nano-janus" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = sorted(p for folder in ("benchmarks", "experiments", "scripts") for p in (REPO / folder).glob("*.sh"))
PYTHON = r"(?:python3?|\$\{?PY(?:THON)?\}?)"  # an interpreter as docs ("python") and scripts ("$PY") write it


def test_the_research_folders_hold_modules():
    assert (REPO / "benchmarks" / "__init__.py").exists() and (REPO / "experiments" / "__init__.py").exists()
    assert "benchmarks.reward_speed" in MODULES and "experiments.compare_rewards" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_research_module_imports_without_changing_sys_path(name):
    source = (REPO / (name.replace(".", "/") + ".py")).read_text()
    assert "sys.path" not in source, f"{name} edits sys.path: import shared code from gvu/ instead"
    before = list(sys.path)
    mod = importlib.import_module(name)
    assert sys.path == before
    assert mod.__doc__ and "python -m " + name in mod.__doc__, f"{name}: its docstring shows no `python -m {name}`"


@functools.cache
def help_texts() -> dict[str, str]:
    """{module: its --help text} for every research module with a main(), from one interpreter (a process each
    would take minutes)."""
    code = ("import contextlib, importlib, io, json, sys\n"
            "helps = {}\n"
            "for name in sys.argv[1:]:\n"
            "    mod = importlib.import_module(name)\n"
            "    if not hasattr(mod, 'main'):\n"
            "        continue\n"
            "    sys.argv, out = [name, '--help'], io.StringIO()\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(out):\n"
            "            mod.main()\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), (name, e.code)\n"
            "    else:\n"
            "        raise AssertionError(name + ': --help did not exit')\n"
            "    helps[name] = out.getvalue()\n"
            "print(json.dumps(helps))\n")
    r = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_research_command_line_answers_help():
    helps = help_texts()
    with_main = [m for m in MODULES if "def main(" in (REPO / (m.replace(".", "/") + ".py")).read_text()]
    assert sorted(helps) == with_main and len(helps) >= 20
    assert all(h.startswith("usage: ") for h in helps.values())


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, long flags) for each `python -m benchmarks.X` / `experiments.X` in the docs and the shell
    scripts; a command ends at the end of its line (a trailing backslash joins the next), a backtick, `|`, `&&`, `;`
    or ` #`, and in a script also at a double quote (the end of a quoted command)."""
    found = []
    for path in DOCS + SCRIPTS:
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines, start=1):
            if n > 1 and lines[n - 2].endswith("\\"):
                continue  # joined to the line it continues, below
            k = n
            while line.endswith("\\") and k < len(lines):
                line, k = line[:-1] + " " + lines[k].strip(), k + 1
            args = r'([^`|;"]*)' if path.suffix == ".sh" else r"([^`|;]*)"  # a script quotes each command it runs
            for m in re.finditer(PYTHON + r" -m ((?:benchmarks|experiments)\.[a-z_0-9]+)\b" + args, line):
                rest = re.split(r"&&| #", m.group(2))[0]
                found.append((f"{path.relative_to(REPO)}:{n}", m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)))
    return found


def test_every_research_command_the_docs_show_exists_with_its_flags():
    commands = doc_commands()
    if not commands:
        pytest.skip("the docs show no python -m benchmarks/experiments command")
    helps = help_texts()
    wrong = [f"{where}: no module {mod}" for where, mod, _ in commands if mod not in MODULES]
    wrong += [f"{where}: {mod} has no {flag}" for where, mod, flags in commands if mod in helps
              for flag in flags if flag not in ("--help",) and not re.search(rf"(?<![\w-]){flag}(?![\w-])", helps[mod])]
    assert not wrong, "\n".join(wrong)


def test_the_shell_scripts_run_research_modules_as_modules_not_as_file_paths():
    """`python benchmarks/x.py` puts benchmarks/ first on sys.path, where `import gvu` fails unless gvu is
    installed: every script must say `python -m benchmarks.x` (benchmarks/gpu_speed.sh is checked here)."""
    assert SCRIPTS and any(where.startswith("benchmarks/gpu_speed.sh") for where, _, _ in doc_commands())
    wrong = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in SCRIPTS + DOCS
             for n, line in enumerate(p.read_text().splitlines(), start=1)
             if re.search(PYTHON + r"\s+(?:benchmarks|experiments)/\w+\.py", line)]
    assert not wrong, "\n".join(wrong)
