"""The compiled builds of velo_event's and velo_am's hot paths (mypyc), with a pure fallback.

Each package's hot modules (its ``_hot.py`` lists them) are compiled under other names
(``velo_event._compiled._core`` beside the pure ``velo_event._core``,
``velo_am._compiled._protocol`` beside ``velo_am._protocol``), so one install holds both
builds and ``VELO_PURE=1`` chooses the pure ones at import time (see each package's
_select.py and docs/architecture.md, "Compiled build"). Their copies are generated in build/:
a module of a compiled set imports its siblings from the set, and everything else (errors,
handles, messages, pending records) from the one pure package, so both builds share their
exceptions and value types. Without a working C compiler the install goes on with the pure
modules alone and says so once.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: The compiled packages, each with the hot module that records its sources' digest (the one
#: its _select.py reads).
PACKAGES = {"velo_event": "_core", "velo_am": "_protocol"}
COMPILED_PACKAGE = "_compiled"


def _load_hot(package: str) -> object:
    path = Path(package) / "_hot.py"
    spec = importlib.util.spec_from_file_location(f"_{package}_hot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HOT = {package: _load_hot(package) for package in PACKAGES}
HOT_MODULES: dict[str, tuple[str, ...]] = {
    package: hot.HOT_MODULES  # type: ignore[attr-defined]
    for package, hot in _HOT.items()
}
_RELATIVE_IMPORT = re.compile(r"^(\s*from )\.(\w+)( import)", re.MULTILINE)
_RELATIVE_MODULE_IMPORT = re.compile(r"^(\s*from )\.( import )(\w+)", re.MULTILINE)


def _redirect_imports(source: str, hot: tuple[str, ...]) -> str:
    """Imports of a module outside the compiled set go one package up, to the pure one."""

    def redirect(match: re.Match[str]) -> str:
        head, module, tail = match.groups()
        return f"{head}.{module}{tail}" if module in hot else f"{head}..{module}{tail}"

    def redirect_module(match: re.Match[str]) -> str:
        head, middle, module = match.groups()
        return f"{head}.{middle}{module}" if module in hot else f"{head}..{middle}{module}"

    return _RELATIVE_MODULE_IMPORT.sub(redirect_module, _RELATIVE_IMPORT.sub(redirect, source))


def _generate_sources(root: Path) -> dict[str, list[str]]:
    """A copy of the packages under ``root`` (mypy reads the pure modules the sets import)
    with each compiled set's sources in ``PACKAGE/_compiled``; returns those sources' paths."""
    shutil.rmtree(root, ignore_errors=True)
    paths: dict[str, list[str]] = {}
    for package_name, digest_holder in PACKAGES.items():
        package = root / package_name
        ignore = shutil.ignore_patterns("__pycache__", "*.so")
        shutil.copytree(package_name, package, ignore=ignore)
        compiled = package / COMPILED_PACKAGE
        shutil.rmtree(compiled, ignore_errors=True)  # an in-place build's leftovers
        compiled.mkdir()
        doc = f'"""{package_name}\'s hot path, compiled (mypyc)."""\n'
        (compiled / "__init__.py").write_text(doc)
        hot, names = _HOT[package_name], HOT_MODULES[package_name]
        paths[package_name] = []
        for module in names:
            target = compiled / f"{module}.py"
            target.write_text(_redirect_imports((package / f"{module}.py").read_text(), names))
            paths[package_name].append(str(target))
        digest = hot.sources_digest(Path(package_name))  # type: ignore[attr-defined]
        with (compiled / f"{digest_holder}.py").open("a") as holder:
            holder.write(f"\n{hot.DIGEST_NAME} = {digest!r}\n")  # type: ignore[attr-defined]
    return paths


def _group(package: str) -> str:
    return f"{package}.{COMPILED_PACKAGE}._lib"  # mypyc's shared library: {group}__mypyc


def _planned_extensions() -> list[Extension]:
    """The extensions mypyc will make, by name, without their sources yet: so that the steps
    that only list a build's files (metadata, the sdist's file list) do not run mypyc."""
    names = []
    for package, modules in HOT_MODULES.items():
        names += [f"{package}.{COMPILED_PACKAGE}.{module}" for module in modules]
        names.append(f"{_group(package)}__mypyc")
    return [Extension(name, sources=[]) for name in names]


class OptionalCompiledBuild(build_ext):
    """build_ext that compiles the hot path if it can and falls back to pure Python if not."""

    def copy_extensions_to_source(self) -> None:
        # An editable install's modules go to PACKAGE/_compiled, which the checkout lacks.
        for package in PACKAGES:
            (Path(package) / COMPILED_PACKAGE).mkdir(exist_ok=True)
        super().copy_extensions_to_source()

    def run(self) -> None:
        try:
            self._generate()
        except (Exception, SystemExit) as error:  # mypyc exits on an error of its own
            self._fall_back(f"could not generate the compiled sources ({error!r})")
            return
        try:
            super().run()
        except Exception as error:  # a missing or broken compiler, on any platform
            for extension in self.extensions:  # half a build would fail at import: none at all
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self._fall_back(f"could not compile ({error})")

    def _generate(self) -> None:
        """Run mypyc, and give the planned extensions the sources and options it made."""
        from mypyc.build import mypycify  # noqa: PLC0415 - a failed import is a fallback

        sources = _generate_sources(Path("build") / "velo_compiled_src")
        groups = [(paths, _group(package)) for package, paths in sources.items()]
        every = [path for paths, _ in groups for path in paths]
        # One mypy run, one shared library per package (neither calls into the other's). The
        # build's own environment lacks the runtime dependencies (pyzmq, msgpack: pip installs
        # them after building), so mypy reads them as Any here; the compiled sets are checked
        # as usual, the modules they merely import are read, not judged (CI runs mypy --strict).
        lenient = ["--follow-imports=silent", "--ignore-missing-imports"]
        lenient.append("--no-warn-unused-ignores")  # the ignores of msgpack's missing stubs
        made_list = mypycify([*lenient, *every], opt_level="3", debug_level="0", separate=groups)
        made = {extension.name: extension for extension in made_list}
        for extension in self.extensions:
            for field, value in vars(made.pop(extension.name)).items():
                if not field.startswith("_"):  # setuptools' own bookkeeping stays
                    setattr(extension, field, value)
        if made:
            raise RuntimeError(f"mypyc made unplanned extensions: {sorted(made)}")

    def _fall_back(self, why: str) -> None:
        self.extensions = []
        # An editable install's earlier build would be imported, though older than the code.
        for package in PACKAGES:
            shutil.rmtree(Path(package) / COMPILED_PACKAGE, ignore_errors=True)
        message = f"velo: {why}; installing the pure-Python build of velo_event and velo_am"
        print(message, file=sys.stderr)  # pip shows a build's output with -v


setup(
    cmdclass={"build_ext": OptionalCompiledBuild},
    ext_modules=_planned_extensions(),
)
