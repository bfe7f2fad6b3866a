"""The wheel holds every package and data file that a non-editable install
needs: built here from the source tree, installed into a folder, used there."""

import os
import shutil
import subprocess
import sys
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that the build's files stay out of the checkout,
    # and as pip builds it for an install (isolated, with the declared setuptools).
    source = tmp / "source"
    for name in ("kdpvlpa", "llm_gen", "recipes"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
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
