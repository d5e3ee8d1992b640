"""The embedded default corpus: offline, several natural languages and code (see corpus/README.md).

Three parts, each a builtin source name:
- `builtin:code`: Python source files of a fixed list of standard-library modules, read from
  this Python installation (every Python has them; not shipped here). One file, one document.
- `builtin:docs`: the English help topics of `pydoc_data.topics` (the text behind `help()`),
  also from this installation. One topic, one document.
- `builtin:multilingual`: short original texts in 14 languages shipped in corpus/*.txt,
  Apache-2.0 like the project. One paragraph (blank-line separated), one document.
`builtin:default-corpus` is the three parts in that order.

The code and docs parts depend on the Python version, so the corpus (and every batch built
from it) is identical across machines with the same Python version; the fingerprint below
hashes the documents into the token cache key.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "corpus"
TOKENIZER_PATH = CORPUS_DIR / "default.model"

# Standard-library modules present in every CPython 3.11+; a missing one is skipped.
_CODE_MODULES = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "pathlib.py",
    "pprint.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "tarfile.py",
    "textwrap.py",
    "typing.py",
    "zipfile.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "collections/__init__.py",
    "concurrent/futures/_base.py",
    "concurrent/futures/thread.py",
    "logging/__init__.py",
    "logging/handlers.py",
    "http/client.py",
    "urllib/parse.py",
    "email/message.py",
    "email/utils.py",
    "asyncio/tasks.py",
    "asyncio/queues.py",
)

_PARTS = ("builtin:code", "builtin:docs", "builtin:multilingual")


def check_builtin_name(path: str) -> None:
    if path != "builtin:default-corpus" and path not in _PARTS:
        raise FileNotFoundError(
            f"{path} is not a builtin corpus; use one of builtin:default-corpus, "
            + ", ".join(_PARTS)
        )


def iter_builtin_documents(path: str) -> Iterator[str]:
    """Documents of a builtin corpus name, in a fixed order."""
    check_builtin_name(path)
    if path == "builtin:default-corpus":
        for part in _PARTS:
            yield from iter_builtin_documents(part)
    elif path == "builtin:code":
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for name in _CODE_MODULES:
            if (stdlib / name).is_file():
                yield (stdlib / name).read_text(encoding="utf-8")
    elif path == "builtin:docs":
        from pydoc_data.topics import topics

        for name in sorted(topics):
            yield topics[name]
    else:
        for text_file in sorted(CORPUS_DIR.glob("*.txt")):
            for paragraph in text_file.read_text(encoding="utf-8").split("\n\n"):
                if paragraph.strip():
                    yield paragraph.strip("\n")


def fingerprint(path: str) -> str:
    """Hash of the documents themselves (a few MB, milliseconds): changes when they change."""
    digest = hashlib.sha256(path.encode())
    for document in iter_builtin_documents(path):
        digest.update(document.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]
