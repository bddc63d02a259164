"""A sane recursion limit for every Mixhouse process: :func:`pin_recursion_limit`.

py_ecc (imported by eth-account through eth-keyfile) runs ``sys.setrecursionlimit(100000)``
when it is first imported. Python code nested that deep overflows the C stack long before
the limit is reached, so instead of a ``RecursionError`` the interpreter dies with SIGSEGV:
one JSON body of 100,000 ``[`` killed the API. :func:`pin_recursion_limit` imports py_ecc
itself (its limit change runs once per process, so a later import of eth-account cannot
raise the limit again) and puts the limit back to CPython's default. Mixhouse never calls
py_ecc's deeply recursive code (BLS pairings), which is what the raised limit is for.

``mixhouse/__init__.py`` calls it, so it runs before any Mixhouse module imports eth-account.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

SANE_RECURSION_LIMIT = 1000  # CPython's default


def pin_recursion_limit(limit: int = SANE_RECURSION_LIMIT) -> None:
    """Import py_ecc now, then lower the recursion limit to ``limit`` if it is higher.

    A limit set lower on purpose (by a test harness, say) is left alone.
    """
    with contextlib.suppress(ImportError):  # eth-account always brings it; nothing to pin otherwise
        importlib.import_module("py_ecc")
    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)
