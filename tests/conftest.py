"""Shared fixtures: the repository root, the real benchmark files, and an in-process `gvu` runner."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real prompt files live outside the repo, read-only, beside it: <repo>/../shared/benchmarks.
BENCHMARKS = REPO.parent / "shared" / "benchmarks"


@pytest.fixture
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"real benchmark prompt files not found at {BENCHMARKS} (they live outside the repo)")
    return BENCHMARKS


@pytest.fixture
def gvu(capsys):
    """Run the `gvu` command in-process: gvu("eval", "folder") -> (exit code, stdout, stderr)."""
    from gvu.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A saved tiny random nano-Janus (the smoke size), shared read-only by the training tests."""
    from gvu.models.nano import SPECS, build_random
    from gvu.models.pretrain import save_model

    path = str(tmp_path_factory.mktemp("tiny") / "model")
    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], path)
    return path
