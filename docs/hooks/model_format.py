"""MkDocs hook: the model-format page names every ``ganserve.*`` metadata key, and no
other.

The keys are ``ganserve.contract.model_format.Key.ALL``, the ones export writes and the
server reads; a key added there and not documented (or documented and since removed)
is a warning, so the strict build fails.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ganserve.contract.model_format import Key

PAGE = "model-format.md"

log = logging.getLogger("mkdocs.hooks.model_format")
_KEY = re.compile(r"`(ganserve\.[a-z_]+)`")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri == PAGE:
        named = set(_KEY.findall(markdown))
        for key in Key.ALL:
            if key not in named:
                log.warning("%s does not describe the metadata key %s", PAGE, key)
        for key in sorted(named - set(Key.ALL) - {"ganserve.contract.model_format"}):
            log.warning("%s names %s, which is not a metadata key", PAGE, key)
    return markdown
