"""The start of the scripts that tests run in a subprocess whose import system
refuses some packages (a standalone module must run where seqdsl cannot be
imported): one ``sys.meta_path`` finder, shared by the backends' tests."""

from __future__ import annotations

import textwrap


def refusing(*packages: str) -> str:
    """Python source installing a finder that raises ImportError for ``packages``
    (top-level names) and for their submodules; prepend it to a driver script."""
    return textwrap.dedent(
        f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {packages!r}:
                    raise ImportError(f"{{name}} is refused in this test")
                return None

        sys.meta_path.insert(0, Refuse())
        """
    )
