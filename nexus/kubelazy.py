"""Import kubernetes-asyncio without its generated API and model classes, until they are used.

``import kubernetes_asyncio`` (or any of its modules) runs its package ``__init__``, which
imports every generated API group and every model: about 850 modules and 30 MB of memory in
each process, before anything is used. The runtime uses its configuration, kubeconfig loading
and auth (``Configuration``, ``ApiClient``, ``config``), not the generated classes: requests
and JSON are done by :class:`nexus.runtime.client.Client`.

:func:`install` registers stand-ins for the packages ``kubernetes_asyncio``,
``kubernetes_asyncio.client`` and ``kubernetes_asyncio.client.models`` that import a name
from its real module the first time it is read (``k8s_client.Configuration``,
``k8s_client.V1ObjectMeta``: what the package ``__init__`` would have imported), so that code
written against the package works unchanged. It must run before anything imports
kubernetes-asyncio (hence here, outside ``nexus.runtime``, whose package imports it, and
called from ``nexus/__init__``); it does nothing if that already happened, or if the
package's layout is not the one it knows (then everything is imported as usual).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "kubernetes_asyncio"
_SUBPACKAGES = frozenset({"client", "config", "dynamic", "stream", "utils", "watch"})
_IMPORT_LINE = re.compile(r"^from ([\w.]+) import (\w+)\s*$", re.MULTILINE)
_VERSION = re.compile(r"^__version__ = [\"']([^\"']+)[\"']", re.MULTILINE)


def install() -> bool:
    """Registers the lazy packages; True if it did (see the module docstring)."""
    if PACKAGE in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    top = Path(spec.origin)
    client_init = top.parent / "client" / "__init__.py"
    models_init = top.parent / "client" / "models" / "__init__.py"
    try:
        version = _VERSION.search(top.read_text())
        client_names = _names(client_init)
        model_names = _names(models_init)
    except OSError:
        return False
    # The layout this was written for: generated classes re-exported one per line.
    if not (version and "Configuration" in client_names and "ApiClient" in client_names):
        return False
    pkg = _lazy(PACKAGE, top, lambda a: f"{PACKAGE}.{a}" if a in _SUBPACKAGES else None)
    pkg.__dict__["__version__"] = version.group(1)
    client = _lazy(f"{PACKAGE}.client", client_init, client_names.get)
    pkg.__dict__["client"] = client
    client.__dict__["models"] = _lazy(f"{PACKAGE}.client.models", models_init, model_names.get)
    return True


def installed() -> bool:
    """Whether the lazy stand-ins are in place."""
    return isinstance(sys.modules.get(f"{PACKAGE}.client"), _LazyPackage)


def _names(init: Path) -> dict[str, str]:
    """Name -> module it comes from, for each ``from M import Name`` line of ``init``."""
    return {m.group(2): m.group(1) for m in _IMPORT_LINE.finditer(init.read_text())}


class _LazyPackage(types.ModuleType):
    """A package whose attributes are imported from their modules on first use."""

    _source: Callable[[str], str | None]

    def __getattr__(self, name: str) -> Any:
        source = self._source(name) if not name.startswith("__") else None
        if source is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = importlib.import_module(source)
        value = module if source == f"{self.__name__}.{name}" else getattr(module, name)
        setattr(self, name, value)
        return value


def _lazy(name: str, init: Path, source: Callable[[str], str | None]) -> _LazyPackage:
    mod = _LazyPackage(name)
    mod._source = source
    mod.__file__ = str(init)
    mod.__path__ = [str(init.parent)]
    mod.__package__ = name
    mod.__spec__ = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    sys.modules[name] = mod
    return mod
