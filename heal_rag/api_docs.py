"""The demo corpus, built where it runs: the API documentation of the installed scientific Python libraries.

Every public function and class of numpy, scipy and scikit-learn whose docstring is long enough becomes one
Markdown file, ``<library>/<subpackage>/.../<object>.md``, so the folders are a real label hierarchy (library →
subpackage → module). The file's heading is the docstring's summary line, the natural query a user asks ("Export a
decision tree in DOT format."), and its body the object's signature and the rest of the docstring (parameters,
notes, examples), so the summary is not inside the passage. A documentation assistant for a software stack is a
realistic RAG job, and it exercises the folder path users take (``heal-rag train --data DIR``).

Nothing is copied into the repository or downloaded: the tree is written from the docstrings of what is installed,
deterministically for a given set of versions; :attr:`ApiDocs.fingerprint` identifies it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from heal_rag.outputs import atomic_directory, prepare_output_dir

#: Hidden file in the tree describing it (versions, fingerprint); hidden files are not read as documents.
CORPUS_INFO_FILE = ".heal_rag-corpus.json"
#: Libraries documented by default (import names).
DEFAULT_LIBRARIES = ("numpy", "scipy", "sklearn")
#: Distribution names, for the versions printed with the corpus.
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}
#: Shortest passage kept (characters of docstring after the summary line).
MIN_PASSAGE_CHARS = 300
#: Module path parts that are not public API.
_SKIPPED_PARTS = {"tests", "testing", "conftest", "setup", "externals", "libs", "f2py", "distutils", "core"}
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


@dataclass(frozen=True)
class ApiDocs:
    """A built API-documentation tree.

    Attributes:
        root: The folder holding ``<library>/.../<object>.md``.
        n_objects: Objects documented.
        n_folders: Distinct folders (label-path prefixes) holding them.
        versions: ``{library: version}`` of what was documented.
        fingerprint: SHA-256 over every file's path and bytes: equal versions give equal fingerprints.
    """

    root: Path
    n_objects: int
    n_folders: int
    versions: dict[str, str]
    fingerprint: str

    def describe(self) -> str:
        """One line for people: size, versions and fingerprint."""
        versions = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        return (
            f"{self.n_objects} API objects in {self.n_folders} folders from {versions} "
            f"(corpus {self.fingerprint[:19]})"
        )


def _public_modules(library: str) -> list[Any]:
    """The library and its public submodules (no part starting with ``_``, no tests), imported, sorted by name."""
    package = importlib.import_module(library)
    modules = [package]
    prefix = package.__name__ + "."
    with warnings.catch_warnings():  # walking imports packages, some of them deprecated aliases
        warnings.simplefilter("ignore")
        found = list(pkgutil.walk_packages(package.__path__, prefix, onerror=lambda name: None))
    for info in found:
        parts = info.name.split(".")
        if any(part.startswith("_") or part in _SKIPPED_PARTS for part in parts):
            continue
        try:
            module, deprecated = _without_warnings(importlib.import_module, info.name)
        except Exception:  # noqa: BLE001 - a module that cannot import (optional dependency) is not documented
            continue
        if not deprecated:  # deprecated namespaces (numpy.core, ...) are not documented
            modules.append(module)
    return sorted(modules, key=lambda module: module.__name__)


def _without_warnings(function: Any, *args: Any) -> tuple[Any, bool]:
    """``function(*args)`` with its warnings silenced, and whether it warned that something is deprecated."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = function(*args)
    deprecated = any(issubclass(w.category, (DeprecationWarning, FutureWarning)) for w in caught)
    return value, deprecated


def _is_documented_object(value: Any) -> bool:
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return True
    return type(value).__name__ == "ufunc"  # numpy's ufuncs (np.add, ...) are objects, not functions


def _version(library: str) -> str:
    top = library.split(".")[0]
    return metadata.version(_DISTRIBUTIONS.get(top, top))


def split_docstring(docstring: str) -> tuple[str, str]:
    """``(summary, rest)`` of a docstring: the first paragraph (a leading C signature line skipped) and the rest."""
    lines = inspect.cleandoc(docstring).splitlines()
    while lines and (not lines[0].strip() or _SIGNATURE_LINE.match(lines[0].strip())):
        lines.pop(0)
    summary: list[str] = []
    while lines and lines[0].strip():
        summary.append(lines.pop(0).strip())
    return " ".join(summary), "\n".join(lines).strip()


#: `` at 0x7f...`` in a default value's repr (``<object object at 0x7f...>``): a memory address, new in every process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(qualified_name: str, value: Any) -> str:
    """``name(signature)``, without the memory addresses some defaults print, so the tree is the same every run."""
    try:
        return _ADDRESS.sub("", f"{qualified_name}{inspect.signature(value)}")
    except (TypeError, ValueError):
        return qualified_name


def collect_objects(libraries: tuple[str, ...] = DEFAULT_LIBRARIES, min_chars: int = MIN_PASSAGE_CHARS) -> dict:
    """``{relative_path: (summary, body)}`` for every documented public object of ``libraries``.

    An object exported from several public modules is documented once, under the shortest module path (then the
    first in name order): ``numpy.linalg.norm``, not ``numpy.linalg.linalg.norm``.
    """
    chosen: dict[int, tuple[str, str, Any]] = {}
    for library in libraries:
        for module in _public_modules(library):
            names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
            for name in sorted({str(n) for n in names}):
                try:
                    value, deprecated = _without_warnings(getattr, module, name)
                except Exception:  # noqa: BLE001 - lazy attributes may fail to load
                    continue
                if deprecated or name.startswith("_") or not _is_documented_object(value):
                    continue
                owner = str(getattr(value, "__module__", None) or "")
                if owner.split(".")[0] != library.split(".")[0] and type(value).__name__ != "ufunc":
                    continue  # re-exported from another library (e.g. numpy objects inside scipy)
                key = id(value)
                current = chosen.get(key)
                candidate = (module.__name__, name, value)
                if current is None or (len(module.__name__.split(".")), module.__name__) < (
                    len(current[0].split(".")),
                    current[0],
                ):
                    chosen[key] = candidate
    objects: dict[str, tuple[str, str]] = {}
    for module_name, name, value in chosen.values():
        docstring = inspect.getdoc(value) or ""
        summary, rest = split_docstring(docstring)
        if not summary or len(rest) < min_chars:
            continue
        relative = "/".join(module_name.split(".")) + f"/{name}.md"
        if relative in objects:
            continue
        body = f"`{_signature(f'{module_name}.{name}', value)}`\n\n{rest}"
        objects[relative] = (summary, body)
    return dict(sorted(objects.items()))


def build_api_docs(
    out_dir: str | os.PathLike[str],
    *,
    libraries: tuple[str, ...] = DEFAULT_LIBRARIES,
    min_chars: int = MIN_PASSAGE_CHARS,
    overwrite: bool = False,
) -> ApiDocs:
    """Write the API-documentation tree of ``libraries`` to ``out_dir`` (see the module docstring).

    Args:
        out_dir: New, empty, or an earlier tree (replaced only with ``overwrite=True``).
        libraries: Import names of the libraries to document.
        min_chars: Leave out objects whose docstring, without its summary, is shorter than this.
        overwrite: Replace an earlier tree heal_rag wrote.

    Returns:
        An :class:`ApiDocs` describing the tree.
    """
    root = prepare_output_dir(out_dir, overwrite=overwrite, what="API docs folder", kind="api-docs")
    objects = collect_objects(libraries, min_chars)
    if not objects:
        raise ValueError(f"No documented objects found in {libraries}.")
    digest = hashlib.sha256()
    with atomic_directory(root, overwrite=overwrite, kind="api-docs") as staging:
        for relative, (summary, body) in objects.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            content = f"# {summary}\n\n{body}\n"
            path.write_text(content, encoding="utf-8")
            digest.update(relative.encode() + b"\0" + content.encode() + b"\0")
        versions = {library: _version(library) for library in libraries}
        docs = ApiDocs(
            root=root,
            n_objects=len(objects),
            n_folders=len({str(Path(relative).parent) for relative in objects}),
            versions=versions,
            fingerprint="sha256:" + digest.hexdigest(),
        )
        (staging / CORPUS_INFO_FILE).write_text(json.dumps({**vars(docs), "root": str(root)}), encoding="utf-8")
    return docs
