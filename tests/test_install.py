"""A non-editable install works: the wheel carries conf/ and its console scripts run outside the checkout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import TINY

ROOT = Path(__file__).resolve().parents[1]
#: what building the wheel reads from the checkout (pyproject.toml names README.md as the readme)
SOURCES = ["pyproject.toml", "README.md", "fevae", "conf"]


def test_pyproject_lists_every_subpackage():
    """pyproject.toml lists the packages (needed to map conf/ to fevae.conf): a new one must be added."""
    tomllib = pytest.importorskip("tomllib")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fevae").rglob("__init__.py")}
    assert found | {"fevae.conf"} == set(packages)


def _declared_distributions() -> set[str]:
    """Every distribution pyproject.toml declares (dependencies and extras), names normalised (PEP 503)."""
    import re

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", s).group(0)).lower() for s in specs}


def test_every_third_party_module_imported_is_declared():
    """Every module that fevae/, benchmarks/, scripts/ and tests/ import, outside the standard library and the
    checkout, belongs to a distribution that pyproject.toml declares (a floor check installs only those)."""
    import ast
    import importlib.metadata
    import re

    local = {"fevae", "benchmarks", "scripts"} | {p.stem for folder in ("tests", "scripts") for p in (ROOT / folder).rglob("*.py")}
    imported: dict[str, set[str]] = {}
    for folder in ("fevae", "benchmarks", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    imported.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    third_party = {m: files for m, files in imported.items() if m not in sys.stdlib_module_names and m not in local}
    assert {"torch", "lightning", "sklearn", "joblib", "threadpoolctl"} <= set(third_party)  # the scan sees the imports
    owners = importlib.metadata.packages_distributions()
    declared = _declared_distributions()
    undeclared = {m: sorted(files)[:3] for m, files in third_party.items()
                  if not {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(m, [m])} & declared}
    assert not undeclared, f"declare their distributions in pyproject.toml: {undeclared}"


def outer_site_dirs() -> list[str]:
    """The site-packages folders of the Python running the tests, in its sys.path order."""
    dirs = set(site.getsitepackages()) | ({site.getusersitepackages()} if site.ENABLE_USER_SITE else set())
    return [p for p in sys.path if p in dirs and os.path.isdir(p)]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_the_wheel_runs_the_console_scripts_outside_the_checkout(tmp_path, synthetic_data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["FEVAE_DATA_DIR"] = str(synthetic_data_dir)
    work = tmp_path / "work"  # the user's folder: neither the checkout nor a parent of it
    work.mkdir()

    # 1. The wheel, built from a copy of the sources (a build in the checkout would leave build/ there).
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []  # else pip fetches setuptools
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, str(src), "-w", str(tmp_path / "dist")],
        cwd=work, env=env)
    wheel = next((tmp_path / "dist").glob("fevae-*.whl"))

    # 2. A fresh venv that sees the packages of the Python running the tests (torch, lightning, ...)
    # as plain folders appended to sys.path by a .pth file: unlike --system-site-packages, their .pth
    # files are not run, so the editable install of the checkout (its finder) cannot shadow the
    # wheel, and this works whether the tests run in an isolated .venv or with the system's packages.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=work, env=env).stdout.strip())
    (purelib / "outer_site.pth").write_text("".join(f"{d}\n" for d in outer_site_dirs()))
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        cwd=work, env=env)

    # 3. fevae and its configs come from the venv, and the configs are all there.
    where = run([str(python), "-c", "import fevae, fevae.utils.cli as c; print(fevae.__file__); print(c.CONFIG_DIR)"],
                cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(purelib / "fevae") and Path(where[1]) == purelib / "fevae" / "conf", where
    shipped = {p.relative_to(where[1]) for p in Path(where[1]).rglob("*.yaml")}
    assert shipped == {p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml")}

    # 4. The console scripts: every entry point composes its config; fevae-train runs the pipeline.
    for script, args, key in (("fevae-evaluate", ["run_dir=x"], "fe:"), ("fevae-data", [], "paths:"),
                              ("fevae-score", ["run_dir=x", "input=y", "output=z"], "eval:")):
        assert key in run([str(venv / "bin" / script), *args, "--cfg", "job"], cwd=work, env=env).stdout.splitlines()
    run([str(venv / "bin" / "fevae-train"), "+experiment=v2_gaussian", *TINY], cwd=work, env=env, timeout=600)
    runs = list((work / "outputs" / "train" / "v2_gaussian").glob("*/metrics.json"))
    assert len(runs) == 1, list(work.rglob("*"))[:50]
    hydra_yaml = (runs[0].parent / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {purelib / 'fevae' / 'conf'}" in hydra_yaml


def test_check_floors_pins_every_dependency_at_its_floor(tmp_path):
    """scripts/check_floors.py (make check-floors) installs ``name==X`` for every ``name>=X``; a dependency
    without a floor is refused (the check could not say which version it tested)."""
    pytest.importorskip("tomllib")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_floors
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pins = check_floors.floors()
    assert "torch==2.2" in pins and "lightning==2.6" in pins and len(pins) == len(_declared_runtime())
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[project]\ndependencies = ["a[x]>=1.2,<2", "b >= 3", "c"]\n')
    with pytest.raises(SystemExit, match="'c'.*no floor"):
        check_floors.floors(toml)
    toml.write_text('[project]\ndependencies = ["a[x]>=1.2,<2", "b >= 3"]\n')
    assert check_floors.floors(toml) == ["a==1.2", "b==3"]


def _declared_runtime() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
