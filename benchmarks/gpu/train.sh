#!/usr/bin/env bash
# Run on the GPU machine (no network): build bundled models there with --device cuda.
#
#   train.sh --collect-only        stash the parts this call carried (as unpack_install.sh)
#   train.sh [MODEL ...]           train, export, sample, evaluate and document each
#                                  model (default: fashion-cdcgan) into $OUT/models
#
# Options: --epochs N (the recipe's otherwise), --device cuda|cpu (cuda), --dry-run (a few
# steps on synthetic data), --python PY (the interpreter whose PyTorch is used: python3),
# --no-install (run --python as it is, with the project importable: for a check here),
# --parts DIR (benchmarks/gpu/parts), --data-root DIR (default: the carried data group).
#
# Needs the data group's calls (pack.py packs the IDX files of ../shared/data as group
# data). The GPU image's python3 has PyTorch with CUDA, ONNX, ONNX Runtime (CPU, enough
# for the export check and the evaluation), numpy, pillow and tqdm, and torch is far too
# large to carry: the training venv sees python3's packages and gets only the project.
# Should python3 lack one of them, the core wheels of unpack_install.sh's calls are
# installed (if they were carried). Each model is `ganserve build-model`'s, its
# runs under GANSERVE_GPU_HOME; $OUT (else GANSERVE_GPU_HOME/out) gets models/NAME (the
# ONNX file, samples.png, the card with its figures) and train-NAME.log. Copy
# models/NAME into the repository's models/ and commit it with the figures.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${GANSERVE_GPU_HOME:-/tmp/ganserve-gpu}
out=${OUT:-$home/out}
parts=$here/parts
python=python3
device=cuda
mode=train
install=yes
data_root=
build_flags=()
models=()

die() {
    echo "train: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --collect-only) mode=collect ;;
        --epochs) build_flags+=(--epochs "${2:?--epochs needs a number}"); shift ;;
        --device) device=${2:?--device needs cuda or cpu}; shift ;;
        --dry-run) build_flags+=(--dry-run) ;;
        --python) python=${2:?--python needs a path}; shift ;;
        --no-install) install=no ;;
        --parts) parts=${2:?--parts needs a folder}; shift ;;
        --data-root) data_root=${2:?--data-root needs a folder}; shift ;;
        -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) models+=("$1") ;;
    esac
    shift
done
case $device in cuda | cpu) ;; *) die "--device: cuda or cpu" ;; esac
[ ${#models[@]} -gt 0 ] || models=(fashion-cdcgan)
command -v "$python" >/dev/null || die "no $python here (pass --python)"

kit() { "$python" "$here/kit.py" "$@" --stash "$home/parts"; }
if [ -d "$parts" ]; then
    kit collect --from "$parts" || die "collecting failed (see above)"
elif [ "$mode" = collect ]; then
    die "no $parts: carry a call folder of the kit (pack.py lists them)"
fi
[ "$mode" = collect ] && exit 0

if [ -z "$data_root" ]; then
    data_root=$home/data
    kit assemble --group data --out "$data_root" ||
        die "no data: carry the data group's calls (pack.py lists them), or pass --data-root"
fi

vpy=$python
if [ "$install" = yes ]; then
    # A venv made from --python that sees its packages through a .pth file: PyTorch and
    # most of the rest are there on the GPU image. (--system-site-packages would not do:
    # that python3 is itself a venv, and the flag shows the *base* interpreter's
    # packages, not its own.) Only the project is installed, without dependencies.
    venv=$home/venv-train
    [ -x "$venv/bin/python" ] || "$python" -m venv --without-pip "$venv" || die "cannot make a venv"
    vpy=$venv/bin/python
    purelib=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$python" -c 'import site; print("\n".join(site.getsitepackages()))' >"$purelib/ganserve-base.pth"
    "$vpy" -m pip --version >/dev/null 2>&1 || die "$python has no pip to install the project with"
    # What training imports, and the build backend the project needs, that --python may
    # lack: from the stashed core wheels, before the project goes in.
    missing=$("$vpy" -c '
import importlib
from importlib.metadata import PackageNotFoundError, version

missing = set()
for name in ("onnx", "onnxruntime", "numpy", "PIL", "tqdm", "google.protobuf", "grpc"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing.add((exc.name or name).split(".")[0])
try:  # pyproject.toml: setuptools>=77 builds the project (its license field)
    if int(version("setuptools").split(".")[0]) < 77:
        missing.add("setuptools")
except PackageNotFoundError:
    missing.add("setuptools")
print(" ".join(sorted(missing)))
')
    if [ -n "$missing" ]; then
        wheels=$home/wheels
        kit assemble --group core --out "$wheels" ||
            die "$python lacks $missing: carry the core group's calls (section 2 of the README)"
        # shellcheck source-path=SCRIPTDIR source=venv.sh
        . "$here/venv.sh"
        venv_python=$vpy
        "$python" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["requirements"]))' \
            "$home/parts/manifest.json" >"$home/requirements.txt"
        pip_install -r "$home/requirements.txt" "setuptools>=77" ||
            die "installing the core wheels failed"
    fi
    "$vpy" -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-build-isolation -e "$root" || die "installing the project failed"
fi

# torch from --python's site-packages: the one thing the kit does not carry
"$vpy" - "$device" <<'EOF' || die "$vpy cannot train on $device (above)"
import sys

try:
    import torch
except ImportError as exc:
    sys.exit(f"train: no PyTorch here ({exc}); its CUDA build is too large to carry")
import ganserve.training.build  # noqa: F401  (the project and what it imports)
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"train: PyTorch {torch.__version__} sees no CUDA device")
where = torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else "cpu"
print(f"train: PyTorch {torch.__version__} on {where}")
EOF

mkdir -p "$out/models"
runs=$(mktemp -d "$home/runs-XXXXXX") # a fresh run folder: a run is never resumed by accident
status=0
for model in "${models[@]}"; do
    # ${a[@]+...}: an empty array under set -u fails on bash before 4.4
    echo "== $model: ganserve build-model --device $device ${build_flags[*]+${build_flags[*]}}"
    start=$(date +%s)
    # --threads: the evaluation's CPU work (ONNX Runtime, the CAS classifier) on every core
    if "$vpy" -m ganserve build-model "$model" --device "$device" --data-root "$data_root" \
        --threads "$(nproc)" \
        --models-dir "$out/models" --runs-dir "$runs" ${build_flags[@]+"${build_flags[@]}"} \
        2>&1 | tee "$out/train-$model.log"; then
        echo "train: $model built in $(($(date +%s) - start)) s: $out/models/$model"
    else
        echo "train: $model failed (its log: $out/train-$model.log)" >&2
        status=1
    fi
done
exit "$status"
