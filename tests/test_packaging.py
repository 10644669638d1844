"""``pip install .`` and ``pip install -e .`` both give ``import sss_lightning.callbacks``."""

import subprocess
import sys
import venv
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _pip_install(python: str, *args: str) -> None:
    """This interpreter's pip installs into the venv at ``python``; it builds with the setuptools found there
    (the system's, seen through system_site_packages), so the test needs no network."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            *args,
        ],
        check=True,
        cwd=REPO,
    )


def test_wheel_installs_top_level_callbacks_as_subpackage(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("sss_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sss_lightning/callbacks/__init__.py" in names
    assert "sss_lightning/callbacks/summary.py" in names
    assert not any(name.startswith(("callbacks/", "tests/")) for name in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "sss-lightning = sss_lightning.cli:main" in entry_points


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_fresh_venv_imports_callbacks(tmp_path, editable):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = str(env_dir / "bin" / "python")
    _pip_install(python, *(["-e"] if editable else []), str(REPO))
    probe = (
        "import sss_lightning.callbacks as c, sss_lightning, sys; "
        "print(c.FitSummary.__module__); print(sss_lightning.callbacks.__file__)"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    module, path = out.split()
    assert module == "sss_lightning.callbacks.summary"
    expected_root = str(REPO / "callbacks") if editable else str(env_dir)
    assert path.startswith(expected_root), path
    assert (env_dir / "bin" / "sss-lightning").exists()
