"""The rules a client and a server must agree on, in one place beside the seed rule
(``ganserve.seeds``) and the uint8 rule (``ganserve.imaging``).

Only numpy is needed (``onnx`` for reading and writing model files, imported where
used): the server, the client library and the training tools import these modules,
and tests pin each side to them.

- ``encodings``: the response image encodings (name, proto number, bytes per value)
- ``labels``: the default class of an image and the label checks
- ``sizes``: the response-size estimate and the request fit
- ``limits``: the server's request limits and their defaults
- ``model_format``: the ``ganserve.*`` ONNX metadata, its reader and writer; ModelKind
- ``layout``: the repository layout and the version-folder rule
- ``load_state``: LOADING / READY / FAILED
"""

from __future__ import annotations

from .encodings import Encoding
from .layout import MODEL_FILE, is_version, latest_version, version_key
from .limits import DEFAULT_LIMITS, Limits
from .load_state import LoadState
from .model_format import Key, MetadataError, ModelKind, read_metadata, write_metadata

__all__ = [
    "DEFAULT_LIMITS",
    "MODEL_FILE",
    "Encoding",
    "Key",
    "Limits",
    "LoadState",
    "MetadataError",
    "ModelKind",
    "is_version",
    "latest_version",
    "read_metadata",
    "version_key",
    "write_metadata",
]
