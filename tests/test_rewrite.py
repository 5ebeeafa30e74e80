"""The load-time ConvTranspose rewrite (server/rewrite.py): same outputs as the original
graph under ONNX Runtime, only eligible layers touched, a failed check keeps the original."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_onnx import OPSET, make_tiny_dcgan

from ganserve.server import rewrite
from ganserve.server.repository import read_spec
from ganserve.server.rewrite import rewrite_conv_transpose, rewritten_model
from ganserve.server.runtime import OrtRunner, RuntimeConfig

UP = {"kernel_shape": [4, 4], "strides": [2, 2], "pads": [1, 1, 1, 1]}


def _session(model: onnx.ModelProto | str | bytes) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return _session(model).run(None, feeds)


def _feeds(model: onnx.ModelProto, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        i.name: rng.standard_normal(
            [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
        ).astype(np.float32)
        for i in model.graph.input
    }


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


class _Builder:
    """x (N, C, H, W) -> the layers added -> the outputs named; seeded random weights."""

    def __init__(self, channels: int, height: int = 5, width: int = 7, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.channels = channels
        self.input = helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", channels, height, width]
        )
        self.last = "x"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def conv_t(
        self, out: int, bias: bool = False, source: str | None = None, **attrs: object
    ) -> str:
        i = len(self.nodes)
        kernel = attrs.pop("kernel", 4)
        w = self.const(f"w{i}", self.rng.standard_normal((self.channels, out, kernel, kernel)))
        inputs = [source or self.last, w]
        if bias:
            inputs.append(self.const(f"b{i}", self.rng.normal(0, 0.5, out)))
        params = {**UP, **attrs} if kernel == 4 else attrs
        self.nodes.append(helper.make_node("ConvTranspose", inputs, [f"t{i}"], **params))
        self.channels, self.last = out, f"t{i}"
        return self.last

    def batch_norm(self) -> str:
        i, c = len(self.nodes), self.channels
        stats = [
            self.const(f"bn{i}_{k}", v)
            for k, v in enumerate(
                (
                    self.rng.uniform(0.5, 1.5, c),
                    self.rng.normal(0, 0.2, c),
                    self.rng.normal(0, 0.2, c),
                    self.rng.uniform(0.5, 1.5, c),
                )
            )
        ]
        self.nodes.append(
            helper.make_node("BatchNormalization", [self.last, *stats], [f"n{i}"], epsilon=1e-3)
        )
        self.last = f"n{i}"
        return self.last

    def act(self, op: str, **attrs: object) -> str:
        i = len(self.nodes)
        self.nodes.append(helper.make_node(op, [self.last], [f"a{i}"], **attrs))
        self.last = f"a{i}"
        return self.last

    def model(self, *outputs: str, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [self.input],
            [
                helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", "C", "H", "W"])
                for o in outputs or [self.last]
            ],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def _assert_same(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    onnx.checker.check_model(rewritten)
    for batch in (1, 3):
        feeds = _feeds(original, batch)
        for a, b in zip(_outputs(original, feeds), _outputs(rewritten, feeds), strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("chain", [True, False])
def test_dcgan_generator_runs_as_phase_convolutions(
    tmp_path: Path, num_classes: int, chain: bool
) -> None:
    path = make_tiny_dcgan(tmp_path / "model.onnx", num_classes=num_classes)
    original = onnx.load(str(path))
    model = onnx.load(str(path))
    assert rewrite_conv_transpose(model, chain=chain) == (2 if chain else 1)
    ops = _ops(model)
    # BatchNorm folded, Relu moved before the interleave; chained, the image layer reads
    # the hidden layer's phases directly (one interleave left, of the image); else it
    # stays a ConvTranspose after the hidden layer's interleave.
    assert "BatchNormalization" not in ops and ops.count("DepthToSpace") == 1
    assert (ops.count("ConvTranspose"), ops.count("Conv")) == ((0, 5) if chain else (1, 4))
    _assert_same(original, model)


def _build(case: str) -> tuple[onnx.ModelProto, int]:
    """A graph and how many layers the rewrite should change."""
    b = _Builder(channels=8)
    if case == "bias":
        b.conv_t(16, bias=True)
    elif case == "bn-leaky":
        b.conv_t(16)
        b.batch_norm()
        b.act("LeakyRelu", alpha=0.2)
    elif case == "sigmoid-then-tanh":
        b.conv_t(24, bias=True)
        b.act("Sigmoid")
        b.act("Tanh")
    elif case == "rgb-chain":  # hidden layer, then a 3-channel image layer from its phases
        b.conv_t(16)
        b.batch_norm()
        b.act("Relu")
        b.conv_t(3, bias=True)
        b.act("Tanh")
    elif case == "wide-second":  # the second layer is wide: from the interleaved tensor
        b.conv_t(16)
        b.act("Relu")
        b.conv_t(16, bias=True)
    elif case == "three-deep":  # a layer after a chained one reads its interleaved output
        b.conv_t(16)
        b.conv_t(2)
        b.conv_t(16)
    elif case == "narrow-alone":  # 1 channel without a phase stack: ORT's own kernel wins
        b.conv_t(1, bias=True)
        return b.model(), 0
    return b.model(), {"rgb-chain": 2, "wide-second": 2, "three-deep": 3}.get(case, 1)


@pytest.mark.parametrize(
    "case",
    [
        "bias",
        "bn-leaky",
        "sigmoid-then-tanh",
        "rgb-chain",
        "wide-second",
        "three-deep",
        "narrow-alone",
    ],
)
def test_layers_rewrite_to_the_same_outputs(case: str) -> None:
    original, expected = _build(case)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == expected
    assert _ops(model).count("ConvTranspose") == _ops(original).count("ConvTranspose") - expected
    _assert_same(original, model)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel": 3, "strides": [1, 1], "pads": [1, 1, 1, 1]},
        {"output_padding": [1, 1]},
        {"pads": [0, 0, 0, 0]},
        {"strides": [1, 1]},
        {"dilations": [2, 2]},
        {"group": 2},
        {"auto_pad": "SAME_UPPER"},  # with pads too: only the auto_pad check stops it
        {"output_shape": [10, 14]},
    ],
    ids=["k3s1", "output_padding", "pad0", "stride1", "dilated", "group", "auto_pad", "out_shape"],
)
def test_other_conv_transposes_are_left_alone(attrs: dict[str, object]) -> None:
    b = _Builder(channels=8)
    b.conv_t(16, bias=True, **attrs)
    model = b.model()
    before = model.SerializeToString()
    assert rewrite_conv_transpose(model) == 0
    assert model.SerializeToString() == before


def test_weights_from_a_graph_input_are_left_alone() -> None:
    b = _Builder(channels=8)
    b.nodes.append(helper.make_node("ConvTranspose", ["x", "w"], ["y"], **UP))
    model = b.model("y")
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 16, 4, 4]))
    assert rewrite_conv_transpose(model) == 0


@pytest.mark.parametrize("raw_is_output", [True, False])
def test_a_tensor_read_elsewhere_is_not_absorbed(raw_is_output: bool) -> None:
    """A layer's pre-BatchNorm tensor that is a graph output keeps its BatchNorm (and the
    image layer then reads the interleaved tensor, left alone); a post-Relu tensor that
    feeds two nodes keeps its value for both."""
    b = _Builder(channels=8)
    raw = b.conv_t(16)
    b.batch_norm()
    relu = b.act("Relu")
    b.nodes.append(helper.make_node("Neg", [relu], ["neg"]))
    b.conv_t(1, source=relu, bias=True)
    outputs = (raw, "neg", b.last) if raw_is_output else ("neg", b.last)
    original = b.model(*outputs)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == (1 if raw_is_output else 2)
    assert ("BatchNormalization" in _ops(model)) is raw_is_output
    _assert_same(original, model)


@pytest.mark.parametrize("fault", [0.01, np.nan])
def test_rewritten_model_keeps_the_original_when_the_check_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: float,
) -> None:
    path = make_tiny_dcgan(tmp_path / "model.onnx")
    found = rewritten_model(path, _session)
    assert found is not None and found[1] == 2
    real = rewrite.rewrite_conv_transpose

    def faulty(model: onnx.ModelProto) -> int:  # a rewrite with a wrong weight
        count = real(model)
        t = model.graph.initializer[-1]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + fault, t.name))
        return count

    monkeypatch.setattr(rewrite, "rewrite_conv_transpose", faulty)
    with caplog.at_level(logging.WARNING, logger="ganserve.server.rewrite"):
        assert rewritten_model(path, _session) is None
    assert "serving the original" in caplog.text


def test_the_check_compares_shapes_and_non_finite_values() -> None:
    a = np.array([[0.5, np.inf, np.nan]])
    assert rewrite._difference(a, a.copy()) == 0.0
    assert rewrite._difference(a, a + np.array([[1e-6, 0, 0]])) == pytest.approx(1e-6)
    assert rewrite._difference(a, np.array([[0.5, np.inf, 0.0]])) == np.inf
    assert rewrite._difference(a, np.array([[np.nan, np.inf, np.nan]])) == np.inf
    assert rewrite._difference(a, a[:, :2]) == np.inf
    assert rewrite._difference(np.full(3, 10.0), np.full(3, 10.5)) == pytest.approx(0.05)


def test_the_check_feeds_real_inputs_only() -> None:
    b = _Builder(channels=8)
    b.conv_t(16)
    model = b.model()
    model.graph.input.append(helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 2]))
    model.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [8, 16, 4, 4]))
    feeds = rewrite._check_inputs(model, batch=5)
    assert set(feeds) == {"x", "k"}  # w0 is a weight (it has an initializer)
    assert feeds["x"].shape == (5, 8, 5, 7) and feeds["x"].dtype == np.float32
    assert feeds["k"].dtype == np.int64 and not feeds["k"].any()


@pytest.mark.parametrize("opset", [9, 11, 12, 13])
def test_older_opsets_keep_their_version(opset: int) -> None:
    """Ops whose schema changed at opset 11-13 (Clip's attributes, Unsqueeze's axes) keep
    working: the rewrite does not raise the opset, and DepthToSpace gets its ``mode``
    attribute only where it exists (opset 11 on; before, DCR was the only mode)."""
    b = _Builder(channels=8)
    b.conv_t(16, bias=True)
    b.act("Relu")
    if opset < 11:
        b.act("Clip", min=-0.5, max=0.5)
    elif opset < 13:
        b.act("Unsqueeze", axes=[0])
        b.act("Squeeze", axes=[0])
    original = b.model(opset=opset)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == 1
    assert [o.version for o in model.opset_import] == [opset]
    d2s = next(n for n in model.graph.node if n.op_type == "DepthToSpace")
    assert any(a.name == "mode" for a in d2s.attribute) is (opset >= 11)
    _assert_same(original, model)


def test_explicit_zero_output_padding_is_rewritten() -> None:
    """torch's dynamo exporter writes output_padding=[0, 0] on every ConvTranspose."""
    b = _Builder(channels=8)
    b.conv_t(16, bias=True, output_padding=[0, 0])
    original = b.model()
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == 1
    _assert_same(original, model)


def test_float16_layers_keep_their_dtype() -> None:
    b = _Builder(channels=8)
    b.nodes.append(helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16))
    w = np.random.default_rng(0).standard_normal((8, 16, 4, 4)) / 8
    b.inits.append(numpy_helper.from_array(w.astype(np.float16), "w16"))
    b.nodes.append(helper.make_node("ConvTranspose", ["x16", "w16"], ["t16"], **UP))
    b.nodes.append(helper.make_node("Relu", ["t16"], ["r16"]))
    b.nodes.append(helper.make_node("Cast", ["r16"], ["y"], to=TensorProto.FLOAT))
    original = b.model("y")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == 1
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    feeds = _feeds(original, 3)
    a, r = _outputs(original, feeds)[0], _outputs(model, feeds)[0]
    np.testing.assert_allclose(r, a, atol=2e-2 * max(1.0, float(np.abs(a).max())))


def test_new_names_do_not_collide() -> None:
    """An unnamed layer's new nodes are named after its output; a tensor of that name
    already exists."""
    b = _Builder(channels=8)
    b.nodes.append(helper.make_node("Identity", ["x"], ["t1/phase00"], name="t1/phase01"))
    b.conv_t(16, bias=True)
    original = b.model(b.last, "t1/phase00")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == 1
    onnx.checker.check_model(model)
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    _assert_same(original, model)


def test_an_unsorted_graph_is_left_alone() -> None:
    b = _Builder(channels=8)
    b.conv_t(16, bias=True)
    b.act("Relu")
    b.nodes.reverse()  # valid for ONNX Runtime, which sorts it
    model = b.model()
    assert rewrite_conv_transpose(model) == 0


def test_runner_serves_the_rewritten_graph_on_cpu(tmp_path: Path) -> None:
    path = make_tiny_dcgan(tmp_path / "model.onnx", num_classes=10)
    spec = read_spec(path, "tiny-dcgan", "1")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((12, 8)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 12)]
    on = OrtRunner(path, spec, RuntimeConfig(device="cpu", intra_op_threads=2))
    off = OrtRunner(path, spec, RuntimeConfig(device="cpu", rewrite_conv_transpose=False))
    assert (on.rewritten, off.rewritten) == (2, 0)
    for n in (1, 12):  # the single-threaded small-batch twin and the main session
        np.testing.assert_allclose(on.run(z[:n], y[:n]), off.run(z[:n], y[:n]), atol=1e-5)
    # one graph for both sessions: an image's bytes do not depend on the batch it ran in
    assert on.run(z[:1], y[:1]).tobytes() == on.run(z, y)[:1].tobytes()
    # the same request gives the same bytes every time
    assert on.run(z, y).tobytes() == on.run(z, y).tobytes()
    # and on the twin whatever the batch size (side batches run there)
    assert on.run_single_threaded(z, y).tobytes() == on.run(z, y).tobytes()


def test_the_twin_reuses_the_load_check_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load check's single-threaded session of the rewritten graph is the twin:
    original + rewritten for the check, the main session, and no fourth."""
    path = make_tiny_dcgan(tmp_path / "model.onnx")
    sources: list[str | bytes] = []
    real = ort.InferenceSession

    def counting(source: str | bytes, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        sources.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    config = RuntimeConfig(device="cpu", intra_op_threads=2, small_batch_max=4)
    runner = OrtRunner(path, read_spec(path, "tiny-dcgan", "1"), config)
    assert runner.rewritten == 2 and runner.small_batch_max == 4
    assert [isinstance(s, bytes) for s in sources] == [False, True, True]
    z = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    assert runner.run(z[:1]).tobytes() == runner.run(z)[:1].tobytes()  # twin and main agree


def test_weights_that_can_be_fed_are_left_alone() -> None:
    """Old exports list initializers among the graph inputs (overridable): not constants."""
    b = _Builder(channels=8)
    b.conv_t(16, bias=True)
    model = b.model()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
        for t in model.graph.initializer
    )
    before = model.SerializeToString()
    assert rewrite_conv_transpose(model) == 0
    assert model.SerializeToString() == before


def test_a_tensor_a_subgraph_reads_keeps_its_value() -> None:
    """An If branch reads the pre-BatchNorm tensor from the outer scope: BatchNorm stays."""
    b = _Builder(channels=8)
    raw = b.conv_t(16)
    b.batch_norm()
    b.act("Relu")
    branch = helper.make_graph(
        [helper.make_node("Identity", [raw], ["picked"])],
        "branch",
        [],
        [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["N", "C", "H", "W"])],
    )
    b.inits.append(numpy_helper.from_array(np.array(True), "cond"))
    b.nodes.append(
        helper.make_node("If", ["cond"], ["branch_out"], then_branch=branch, else_branch=branch)
    )
    original = b.model(b.last, "branch_out")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    assert rewrite_conv_transpose(model) == 1
    assert "BatchNormalization" in _ops(model)
    _assert_same(original, model)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_image_layer_is_chained_only_with_several_threads(tmp_path: Path, threads: int) -> None:
    path = make_tiny_dcgan(tmp_path / "model.onnx")
    runner = OrtRunner(
        path, read_spec(path, "tiny-dcgan", "1"), RuntimeConfig(intra_op_threads=threads)
    )
    assert runner.rewritten == (2 if threads > 1 else 1)
