"""The version of dpddpm, set here and nowhere else.

``dpddpm.__version__`` re-exports it; ``pyproject.toml`` reads it (statically, without importing torch); every
results and benchmark file the project writes records it as ``dpddpm_version``. Bump it with a CHANGELOG.md entry
and CITATION.cff's ``version`` and ``date-released`` (``tests/test_release.py`` checks they agree).
"""

__version__ = "0.2.0"
