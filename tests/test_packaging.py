"""``pip install .`` and ``pip install -e .`` both give ``import sss_lightning.callbacks``.

The builds run without network (``--no-build-isolation``), so they use the setuptools of the environment
running the tests, which the ``test`` extra declares (``setuptools>=70.1``: ``bdist_wheel`` built in, no
``wheel`` package needed). The fresh venvs see that environment's packages and nothing else: not the base
interpreter's site-packages, whose setuptools may be too old (Debian's 66 has no ``bdist_wheel``) and
which need not hold torch at all when the tests run from a virtual environment.
"""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SETUPTOOLS_MIN = (70, 1)


def _require_build_backend() -> None:
    """Fail with the fix, not with setuptools' ``invalid command 'bdist_wheel'``, when the backend is too old."""
    try:
        import setuptools
    except ImportError:
        pytest.fail(f"building sss-lightning needs setuptools in {sys.prefix}: pip install -e '.[test]'")
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    if version < SETUPTOOLS_MIN:
        try:
            import wheel  # noqa: F401  (older setuptools take bdist_wheel from the wheel package)
        except ImportError:
            pytest.fail(
                f"setuptools {setuptools.__version__} in {sys.prefix} has no bdist_wheel and the wheel package is "
                "missing: pip install -e '.[test]' (it asks for setuptools>=70.1)"
            )


def _site_dirs(repo: Path) -> list[str]:
    """Where the interpreter running the tests finds its packages: its ``sys.path`` minus the checkout's
    root (a venv's own site-packages, not its base's, even when that venv lives inside the checkout, as
    .ci/run's ``.venv-ci`` does; PYTHONPATH and ``.pth`` additions included)."""
    repo = os.path.realpath(repo)
    keep = []
    for entry in sys.path:
        resolved = os.path.realpath(entry) if entry else ""
        if resolved and os.path.isdir(resolved) and resolved != repo:
            keep.append(resolved)
    return list(dict.fromkeys(keep))


def _fresh_venv(env_dir: Path, repo: Path) -> str:
    """A venv without pip or system site-packages that sees this environment's packages after its own.

    The folders go in as plain ``.pth`` lines: appended to ``sys.path`` after the venv's own site-packages
    (so what is installed into the venv wins) and not scanned for ``.pth`` files of their own (so this
    environment's editable install of sss-lightning does not leak in)."""
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer-environment.pth").write_text("\n".join(_site_dirs(repo)) + "\n")
    return str(python)


def _pip_install(python: str, repo: Path, *args: str) -> None:
    """This interpreter's pip installs into the venv at ``python`` and builds with the setuptools the venv
    sees (this environment's, see ``_fresh_venv``), so the test needs no network."""
    _require_build_backend()
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
        cwd=repo,
    )


def test_wheel_installs_top_level_callbacks_as_subpackage(tmp_path, repo):
    _require_build_backend()
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
            str(repo),
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
def test_fresh_venv_imports_callbacks(tmp_path, editable, repo):
    env_dir = tmp_path / "venv"
    python = _fresh_venv(env_dir, repo)
    _pip_install(python, repo, *(["-e"] if editable else []), str(repo))
    probe = (
        "import sss_lightning.callbacks as c, sss_lightning, sys; "
        "print(c.FitSummary.__module__); print(sss_lightning.callbacks.__file__)"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    module, path = out.split()
    assert module == "sss_lightning.callbacks.summary"
    expected_root = str(repo / "callbacks") if editable else str(env_dir)
    assert path.startswith(expected_root), path
    assert (env_dir / "bin" / "sss-lightning").exists()
