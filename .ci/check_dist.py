"""Check the built sdist and wheel, from a fresh venv that has the wheel installed.

Usage (run by ``.ci/run``, with the fresh venv's python, from outside the checkout so
that nothing is imported from it)::

    python check_dist.py DIST_DIR CHECKOUT_DIR

Fails (exit 1, with the reasons) when a file of the package is missing from the wheel or
the sdist, when the installed package is not the wheel's, when a module of it does not
import with its extras installed, or when its metadata is not what users install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import tarfile
import zipfile
from pathlib import Path

DISTRIBUTION = "trio-periodic"
PACKAGE = "periodic"


def main(dist: Path, checkout: Path) -> list[str]:
    problems: list[str] = []
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    source = {
        p.relative_to(checkout).as_posix()
        for p in (checkout / PACKAGE).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    if f"{PACKAGE}/py.typed" not in source:
        problems.append("the checkout has no py.typed")

    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    problems += [f"{wheel.name} lacks {name}" for name in sorted(source - in_wheel)]
    problems += [
        f"{wheel.name} holds {name}, which is not the package's"
        for name in sorted(in_wheel)
        if not name.startswith((f"{PACKAGE}/", "trio_periodic-"))
    ]
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(f"{root}/") for name in tar.getnames()}
    expected = source | {"README.md", "CHANGELOG.md", "pyproject.toml", "docs/conf.py"}
    problems += [f"{sdist.name} lacks {name}" for name in sorted(expected - in_sdist)]

    import periodic

    installed = Path(periodic.__file__).resolve().parent
    if checkout.resolve() in installed.parents:
        problems.append(f"periodic was imported from the checkout ({installed})")
    if not (installed / "py.typed").is_file():
        problems.append("the installed package has no py.typed")
    meta = importlib.metadata.metadata(DISTRIBUTION)
    if importlib.metadata.version(DISTRIBUTION) != periodic.__version__:
        problems.append("the distribution's version is not periodic.__version__")
    if not meta["Summary"]:
        problems.append("no summary in the metadata")
    plugins = importlib.metadata.entry_points(group="pytest11")
    if not any(ep.name == PACKAGE and ep.value == "periodic._pytest_plugin" for ep in plugins):
        problems.append("the pytest plugin is not registered")

    # Every module of the wheel imports, with the extras installed.
    for name in sorted(in_wheel):
        if name.endswith(".py"):
            module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            try:
                importlib.import_module(module)
            except Exception as exc:
                problems.append(f"import {module}: {exc!r}")
    try:  # the extras do their work
        from periodic.cron import next_fire_times

        next(iter(next_fire_times("0 2 * * *", tz="UTC")))
        from periodic.peers import PostgresPeer

        PostgresPeer("postgresql://app@db/app", name="check")
    except Exception as exc:
        problems.append(f"an extra does not work: {exc!r}")
    return problems


if __name__ == "__main__":
    found = main(Path(sys.argv[1]), Path(sys.argv[2]))
    for problem in found:
        print(f"check_dist: {problem}")
    print("check_dist: " + ("FAILED" if found else "the sdist and the wheel are complete"))
    sys.exit(1 if found else 0)
