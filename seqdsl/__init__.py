"""seqdsl: a declarative language for padding, masking and RNN stacks.

    >>> import seqdsl
    >>> prog = seqdsl.loads('''
    ... model M {
    ...     input tokens: i32[B, T] pad(post, value=0)
    ...     x = tokens -> Embedding(100, 8, mask_zero=true) -> LSTM(16)
    ...     output x
    ... }''')
    >>> prog.model().total_params
    2400

The compiler imports no deep-learning framework; backends are imported lazily
by the code that runs models.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Analysis, Program, analyze, analyze_sources, load, loads  # noqa: E402
from .diagnostics import CODES, Diagnostic, SeqError  # noqa: E402
from .externs import ExternError, extern, register_extern  # noqa: E402
from .runtime.common import InputError, WeightsFileError  # noqa: E402

__all__ = [
    "CODES",
    "Analysis",
    "Diagnostic",
    "ExternError",
    "InputError",
    "Program",
    "SeqError",
    "WeightsFileError",
    "analyze",
    "analyze_sources",
    "extern",
    "register_extern",
    "load",
    "loads",
    "__version__",
]
