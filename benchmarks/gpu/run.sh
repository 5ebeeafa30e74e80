#!/usr/bin/env bash
# Run on the GPU machine after unpack_install.sh: the benchmark with --device cuda on the
# bundled models, large requests of GPU_LARGE_COUNT images (256) so that target (G),
# served images/s >= 0.8 x raw ONNX Runtime on CUDA at that batch, is measured in the
# same run as the rest; the servers get --max-batch-size of that count, so that a large
# request runs as one batch, as in the raw measurement. Figures go to $OUT (else
# GANSERVE_GPU_HOME/out): environment.txt, bench-<model>.txt (the printed report and the
# progress lines) and bench-<model>.json.
#
#   bash benchmarks/gpu/run.sh [extra bench.py flags, e.g. --no-naive]
#
# GPU_MODELS ("mnist-dcgan"; e.g. "mnist-dcgan mnist-dcgan-int8"), GPU_DURATION (2 s a
# point), GPU_REPEATS (1), GPU_LARGE_COUNT (256), GPU_PYTHON (the venv's python).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${GANSERVE_GPU_HOME:-/tmp/ganserve-gpu}
python=${GPU_PYTHON:-$home/venv/bin/python}
out=${OUT:-$home/out}
models=${GPU_MODELS:-mnist-dcgan}
large=${GPU_LARGE_COUNT:-256}

[ -x "$python" ] || {
    echo "run: no $python: run benchmarks/gpu/unpack_install.sh first" >&2
    exit 1
}
mkdir -p "$out"
cuda=ok
{
    echo "# nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    else
        echo "(no nvidia-smi)"
    fi
    echo "# packages"
    "$python" -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(onnxruntime|grpcio|numpy|protobuf|onnx|nvidia)' || true
    echo "# check"
    "$python" "$here/check_cuda.py" --model "$root/models/mnist-dcgan/1/model.onnx" 2>&1 ||
        cuda=failed
} >"$out/environment.txt"
cat "$out/environment.txt"
if [ "$cuda" != ok ]; then
    echo "run: ONNX Runtime cannot run on CUDA here (above); see unpack_install.sh" >&2
    exit 1
fi

status=0
for model in $models; do
    echo "== $model, --device cuda, count $large at c=1,4"
    # The report (stdout) and the per-point progress (stderr) both go to the .txt file.
    "$python" "$root/benchmarks/bench.py" --device cuda --model-dir "$root/models" \
        --model "$model" --large-count "$large" --large-concurrency 1,4 \
        --server-arg="--max-batch-size=$large" \
        --duration "${GPU_DURATION:-2}" --warmup 1 --repeats "${GPU_REPEATS:-1}" \
        --json "$out/bench-$model.json" "$@" 2>&1 | tee "$out/bench-$model.txt" ||
        status=1
done
echo "run: figures in $out"
exit "$status"
