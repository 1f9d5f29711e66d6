"""``HEALWarning``: the category of every warning heal_rag itself gives."""

from __future__ import annotations


class HEALWarning(UserWarning):
    """A warning from heal_rag (not from a library it calls).

    Filter them all with ``warnings.filterwarnings("ignore", category=heal_rag.HEALWarning)``, or turn them into
    errors in tests; the CLI prints them as one ``heal-rag <command>: warning: ...`` line.
    """
