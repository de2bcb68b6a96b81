"""The run-time code of the generated models: one real module per backend.

``seqdsl.runtime.torch``, ``seqdsl.runtime.jax`` and ``seqdsl.runtime.keras``
hold the layers, kernels helpers and mask rules that generated modules call;
``seqdsl.runtime.common`` holds what every backend shares (NumPy only). Each
backend module imports its framework at import time, so this package imports
none of them: the compiler never imports this package's backend modules, and a
generated module imports the one it runs on.

A generated module imports what it uses from here by default. ``seqdsl compile
--standalone`` copies those definitions, with everything they depend on, into
the generated file instead (:mod:`seqdsl.emit.standalone`, by reading this
package's source with :mod:`ast`; nothing is imported), so that the file needs
only NumPy and its framework.

Rules that keep the copy exact: a runtime module defines at top level only
imports, functions, classes and constant assignments; it imports other runtime
modules with ``from .module import name`` (or ``from seqdsl.runtime.module
import name``); it has no ``if TYPE_CHECKING:`` block (what it annotates with,
it imports).
"""
