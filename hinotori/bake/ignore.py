"""Which paths of a build context stay out of the image.

Rules come from ``.hinotoriignore`` in the context root, with exactly gitignore's semantics
(patterns, ``!`` negation, trailing ``/`` for directories only, leading ``/`` to anchor, ``**``),
as implemented by the ``pathspec`` library's ``GitIgnoreSpec``. As in git, a file cannot be
re-included once a directory above it is excluded: the copy never descends into an excluded
directory.

Besides the file, exactly two names are always excluded, at any depth, and cannot be re-included:

    .git        a repository's history is not part of what it builds (also a submodule's file)
    .hinotori   the project's own state, which holds the image store itself

Nothing else is implicit. In particular ``.hinotoriignore`` itself is copied like any other file
(exclude it with a line ``/.hinotoriignore`` if it should not be in the image).
"""

from __future__ import annotations

from pathlib import Path

import pathspec

from hinotori.errors import BakeError

ALWAYS_EXCLUDED = frozenset({".git", ".hinotori"})


class IgnoreRules:
    """Answers "is this context path excluded?" for relative POSIX paths."""

    def __init__(self, lines: list[str] | None = None) -> None:
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines or [])

    @classmethod
    def load(cls, context: Path, ignore_file: str = ".hinotoriignore") -> IgnoreRules:
        """Rules from ``context/ignore_file``; no file means only the built-in exclusions."""
        path = context / ignore_file
        if not path.is_file():
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BakeError(f"cannot read {path}: {exc}",
                            hint="the ignore file must be readable UTF-8 text") from exc
        return cls(text.splitlines())

    def excluded(self, rel: str, is_dir: bool) -> bool:
        if rel.rsplit("/", 1)[-1] in ALWAYS_EXCLUDED:
            return True
        # pathspec matches directory-only patterns ("build/") against paths ending in "/".
        return self._spec.match_file(rel + "/" if is_dir else rel)
