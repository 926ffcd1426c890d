"""The compiled build of velo_event's hot path (mypyc), with a pure-Python fallback.

The hot modules are compiled under other names (``velo_event._compiled._core`` beside the pure
``velo_event._core``), so one install holds both builds and ``VELO_PURE=1`` chooses the pure one
at import time (see velo_event/_select.py and docs/architecture.md, "Compiled build"). Their
copies are generated in build/: a module of the compiled set imports its siblings from the set,
and everything else (errors, handles, pending records) from the one pure package, so both
builds share their exceptions and handle type. Without a working C compiler the install goes on
with the pure modules alone and says so once.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PACKAGE = "velo_event"
COMPILED_PACKAGE = "_compiled"


def _load_hot() -> object:
    spec = importlib.util.spec_from_file_location("_velo_hot", Path(PACKAGE) / "_hot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_hot = _load_hot()
HOT_MODULES: tuple[str, ...] = _hot.HOT_MODULES  # type: ignore[attr-defined]
_RELATIVE_IMPORT = re.compile(r"^(\s*from )\.(_\w+)( import)", re.MULTILINE)


def _redirect_imports(source: str) -> str:
    """Imports of a module outside the compiled set go one package up, to the pure one."""

    def redirect(match: re.Match[str]) -> str:
        head, module, tail = match.groups()
        return f"{head}.{module}{tail}" if module in HOT_MODULES else f"{head}..{module}{tail}"

    return _RELATIVE_IMPORT.sub(redirect, source)


def _generate_sources(root: Path) -> list[str]:
    """A copy of the package under ``root`` (mypy reads the pure modules the set imports) with
    the compiled set's sources in ``velo_event/_compiled``; returns those sources' paths."""
    shutil.rmtree(root, ignore_errors=True)
    package = root / PACKAGE
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    compiled = package / COMPILED_PACKAGE
    shutil.rmtree(compiled, ignore_errors=True)  # an in-place build's leftovers
    compiled.mkdir()
    (compiled / "__init__.py").write_text('"""velo_event\'s hot path, compiled (mypyc)."""\n')
    paths = []
    for module in HOT_MODULES:
        target = compiled / f"{module}.py"
        target.write_text(_redirect_imports((package / f"{module}.py").read_text()))
        paths.append(str(target))
    digest = _hot.sources_digest(Path(PACKAGE))  # type: ignore[attr-defined]
    with (compiled / "_core.py").open("a") as core:
        core.write(f"\n{_hot.DIGEST_NAME} = {digest!r}\n")  # type: ignore[attr-defined]
    return paths


GROUP = f"{PACKAGE}.{COMPILED_PACKAGE}._lib"  # mypyc's shared library: {GROUP}__mypyc


def _planned_extensions() -> list[Extension]:
    """The extensions mypyc will make, by name, without their sources yet: so that the steps
    that only list a build's files (metadata, the sdist's file list) do not run mypyc."""
    names = [f"{PACKAGE}.{COMPILED_PACKAGE}.{module}" for module in HOT_MODULES]
    return [Extension(name, sources=[]) for name in [*names, f"{GROUP}__mypyc"]]


class OptionalCompiledBuild(build_ext):
    """build_ext that compiles the hot path if it can and falls back to pure Python if not."""

    def copy_extensions_to_source(self) -> None:
        # An editable install's modules go to velo_event/_compiled, which the checkout lacks.
        (Path(PACKAGE) / COMPILED_PACKAGE).mkdir(exist_ok=True)
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
        made_list = mypycify(sources, opt_level="3", debug_level="0", group_name=GROUP)
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
        shutil.rmtree(Path(PACKAGE) / COMPILED_PACKAGE, ignore_errors=True)
        message = f"velo: {why}; installing the pure-Python build of velo_event"
        print(message, file=sys.stderr)  # pip shows a build's output with -v


setup(
    cmdclass={"build_ext": OptionalCompiledBuild},
    ext_modules=_planned_extensions(),
)
