"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The docstrings use reStructuredText roles (``:class:`~rtc_segment.SegmentClient```,
``:meth:`aclose```), which mkdocstrings' Google-style rendering would show verbatim. This
shows them as ``SegmentClient`` and ``aclose``, as Sphinx would, without touching the
docstrings themselves. Loaded by ``mkdocs.yml``; not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :role:`target` or :role:`~dotted.target` (the tilde shows only the last component).
_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring when its object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for every module, class, function and attribute."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
