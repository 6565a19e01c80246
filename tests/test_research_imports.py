"""benchmarks/ and experiments/ are packages that run as `python -m benchmarks.X` from the repo root: every module
imports without touching sys.path, and the ones with a command line answer --help."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(f"{folder}.{p.stem}" for folder in ("benchmarks", "experiments")
                 for p in (REPO / folder).glob("*.py") if p.stem != "__init__")


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


def test_every_research_command_line_answers_help():
    """One interpreter imports them all and runs each main() with --help (a process each would take minutes)."""
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    mod = importlib.import_module(name)\n"
            "    if not hasattr(mod, 'main'):\n"
            "        continue\n"
            "    sys.argv = [name, '--help']\n"
            "    try:\n"
            "        mod.main()\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), (name, e.code)\n"
            "    else:\n"
            "        raise AssertionError(name + ': --help did not exit')\n"
            "    print('ok', name, flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    helped = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("ok ")]
    with_main = [m for m in MODULES if "def main(" in (REPO / (m.replace(".", "/") + ".py")).read_text()]
    assert helped == with_main and len(helped) >= 20
