"""KServe v2 REST answers in JSON: the tensor written in pieces is the same JSON.

In-process (no tritonclient here: see tests/test_kserve.py for the protocol itself).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ganserve.server import kserve_http


@pytest.mark.parametrize("n", [0, 1, 5, 16_384, 16_385, 40_000])
def test_a_json_answer_holds_every_value_in_order(n: int) -> None:
    values = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    outputs = [
        SimpleNamespace(name="image", datatype="FP32", shape=[n], binary=False, data=values),
        SimpleNamespace(name="b", datatype="FP32", shape=[n], binary=False, data=values[::-1]),
    ]
    # An id that looks like JSON or a placeholder must come back as the string it is.
    result = SimpleNamespace(model_name="m", model_version="1", id='"},[0', outputs=outputs)
    doc = json.loads(kserve_http.infer_response(result).body)
    assert doc["id"] == '"},[0' and doc["model_name"] == "m"
    assert [o["name"] for o in doc["outputs"]] == ["image", "b"]
    assert doc["outputs"][0]["data"] == values.tolist()
    assert doc["outputs"][1]["data"] == values[::-1].tolist()
    assert doc["outputs"][0]["shape"] == [n] and doc["outputs"][0]["datatype"] == "FP32"
