"""The float -> uint8 image rule shared by the server and the client library.

The proto's ``ENCODING_UINT8`` maps generator output in [-1, 1] to bytes by::

    u = clip(rint((x + 1) * 127.5), 0, 255)    # rint: round half to even
    # NaN -> 0, -inf -> 0, +inf -> 255

computed in the array's own float precision (float32 for the server's float32
output, so a client applying this to the FLOAT32 response gets the server's
UINT8 bytes exactly; float64 stays float64, float16 is widened to float32).
The server encodes with it, the client draws pictures with it: one rule, one
implementation. Only numpy is needed (base install).
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_uint8"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] as uint8 [0, 255] by the rule above, same shape.

    ``uint8`` input is returned as is (already bytes); any other non-float
    dtype raises ``ValueError``. The input is never modified: the work happens
    in one float temporary, updated in place, then cast once (this runs for
    every uint8/PNG response, so no further copies).
    """
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {arr.dtype}")
    work = np.result_type(arr.dtype, np.float32).type  # float32, or float64 / longdouble
    y = np.empty(arr.shape, work)  # the one temporary: native order, 0-d stays an array
    np.add(arr, work(1.0), out=y)
    y *= work(127.5)
    np.rint(y, out=y)
    np.clip(y, work(0.0), work(255.0), out=y)
    # NaN survives clip and its cast to uint8 is undefined; a generator ending in
    # tanh never emits it, but a broken one must not crash or garble the encoder.
    # The check costs one pass; np.nan_to_num or fmax/fmin cost several times more.
    nan = np.isnan(y)
    if nan.any():
        y[nan] = 0.0
    return y.astype(np.uint8)
