"""The distributions carry the licence, one version, and (the sdist) the tests and docs a packager needs."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyvmm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_sdist_has_licence_tests_and_docs(dists: Path) -> None:
    (sdist,) = dists.glob("*.tar.gz")
    assert sdist.name == f"pyvmm-{pyvmm.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "docs/ARCHITECTURE.md", "docs/MACHINES.md", "docs/API.md", "tests/run",
            "tests/unit/test_packaging.py", "guest-kernels/Makefile"} <= names
    assert not [name for name in names if "__pycache__" in name or ".venv" in name]


def test_wheel_has_licence_and_spdx_metadata(dists: Path) -> None:
    (wheel,) = dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        info = f"pyvmm-{pyvmm.__version__}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        licence = archive.read(f"{info}/licenses/LICENSE").decode()
        names = set(archive.namelist())
    # the docs --help and the man page cite (`pyvmm help docs` prints where they are)
    assert {"pyvmm_docs/API.md", "pyvmm_docs/MACHINES.md", "pyvmm_docs/ARCHITECTURE.md"} <= names
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence
    assert "License-Expression: GPL-2.0-only" in metadata
    assert f"Version: {pyvmm.__version__}" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata


def test_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion = \"" not in pyproject
