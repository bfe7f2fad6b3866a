"""The wheel holds every package and data file that a non-editable install
needs: built here from the source tree, installed into a folder, used there."""

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts)
             for top in ("kdpvlpa", "llm_gen") for p in (REPO / top).rglob("__init__.py")}
    assert set(listed["packages"]) == found | {"kdpvlpa.recipe_files"}
    assert listed["package-dir"] == {"kdpvlpa.recipe_files": "recipes"}


def _copy_source(target):
    # Builds run on a copy, so that their files stay out of the checkout.
    for name in ("kdpvlpa", "llm_gen", "recipes", "tests", "benchmarks", "docs"):
        shutil.copytree(REPO / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(REPO / name, target / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # Built as pip builds it for an install (isolated, with the declared setuptools).
    source = tmp / "source"
    _copy_source(source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("kdpvlpa-*.whl")
    target = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(target)
    return target, names


def test_the_wheel_holds_the_recipes_and_splits(installed):
    _, names = installed
    recipes = sorted(p.name for p in (REPO / "recipes").glob("*.toml"))
    assert sorted(n.split("/")[-1] for n in names
                  if n.startswith("kdpvlpa/recipe_files/") and n.endswith(".toml")) == recipes
    splits = sorted(p.name for p in (REPO / "kdpvlpa" / "data" / "splits").glob("*.json"))
    assert sorted(n.split("/")[-1] for n in names
                  if n.startswith("kdpvlpa/data/splits/") and n.endswith(".json")) == splits
    assert not any(n.startswith(("tests/", "recipes/", "benchmarks/")) for n in names)
    # The licence, and the READMEs that error messages point to.
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for readme in ("kdpvlpa/data/README.md", "llm_gen/README.md",
                   "llm_gen/requirements-vllm-cpu.txt"):
        assert readme in names


def test_an_installed_wheel_finds_its_recipes_and_splits(installed, tmp_path):
    target, _ = installed
    code = ("import kdpvlpa.recipes as r, llm_gen; "
            "print(r.recipes_dir().relative_to(r.Path(kdpvlpa.__file__).parent)); "
            "print(r.available_recipes()); print(r.load_recipe('demo').name); "
            "print(len(llm_gen.load_split('voc_lt').items))")
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", "import kdpvlpa; " + code], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "recipe_files"
    assert lines[1] == str(sorted(p.stem for p in (REPO / "recipes").glob("*.toml")))
    assert lines[2:] == ["demo", "1142"]


def test_the_sdist_carries_the_tests_benchmarks_and_docs(tmp_path):
    source = tmp_path / "source"
    _copy_source(source)
    (source / "tests" / "__pycache__").mkdir(exist_ok=True)
    (source / "tests" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"")
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_sdist(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=source,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (sdist,) = (tmp_path / "dist").glob("kdpvlpa-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    expected = {str(p.relative_to(REPO)) for top in ("tests", "benchmarks", "docs")
                for p in (REPO / top).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)[:5]
    assert {"recipes/demo.toml", "LICENSE", "kdpvlpa/cli.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
