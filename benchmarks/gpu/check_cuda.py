"""Does ONNX Runtime run a model on the GPU here? One clear line either way.

Checks, in order: onnxruntime offers ``CUDAExecutionProvider``; a session of ``--model``
created with it keeps it (ONNX Runtime falls back to the CPU silently when the driver,
CUDA or cuDNN cannot be loaded); a batch runs and matches the CPU's output. Exit code 0
only if all hold; 1 with the reason otherwise.

    python benchmarks/gpu/check_cuda.py --model models/mnist-dcgan/1/model.onnx
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

_CUDA = "CUDAExecutionProvider"


def check(model: Path, batch: int = 8) -> str:
    """A line describing the GPU session; raises RuntimeError saying what is missing."""
    import numpy as np
    import onnxruntime as ort

    offered = ort.get_available_providers()
    if _CUDA not in offered:
        raise RuntimeError(
            f"CUDA is absent: onnxruntime {ort.__version__} offers only {', '.join(offered)} "
            "(the CPU package, or onnxruntime-gpu shadowed by another onnxruntime)"
        )
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()  # CUDA and cuDNN from the nvidia-* wheels beside onnxruntime
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning: reported below instead
        gpu = ort.InferenceSession(str(model), options, providers=[_CUDA, "CPUExecutionProvider"])
    if gpu.get_providers()[0] != _CUDA:
        raise RuntimeError(
            f"CUDA is not usable: onnxruntime {ort.__version__} lists {_CUDA} but the "
            "session fell back to the CPU (no GPU or driver, or CUDA/cuDNN libraries "
            "missing: see the messages above)"
        )
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.standard_normal((batch, int(i.shape[1]))).astype(np.float32)  # (N, D)
        for i in gpu.get_inputs()
    }
    out = gpu.run(None, feeds)[0]
    cpu = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    diff = float(np.max(np.abs(out - cpu.run(None, feeds)[0])))
    if not np.isfinite(diff) or diff > 1e-2:
        raise RuntimeError(f"CUDA output differs from the CPU's by {diff:.3g}")
    return (
        f"CUDA ok: onnxruntime {ort.__version__}, {model.name} ran a batch of {batch} on "
        f"{_CUDA} (output {tuple(out.shape)}, max |GPU - CPU| {diff:.2g})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        print(check(args.model), flush=True)
    except (RuntimeError, ImportError) as exc:
        print(f"check_cuda: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
