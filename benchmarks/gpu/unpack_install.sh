#!/usr/bin/env bash
# Run on the GPU machine (no network), from any directory, after pack.py ran elsewhere.
#
#   unpack_install.sh --collect-only   stash the parts this call carried (hashes checked)
#   unpack_install.sh                  stash, reassemble (hashes checked), install into a
#                                      venv, check that ONNX Runtime runs on CUDA
#   unpack_install.sh --check-only     only the CUDA check, with --python as it is
#
# Options: --parts DIR (where the carried call folders are: benchmarks/gpu/parts),
# --python PY (the interpreter the venv is made from; python3), --model ONNX
# (for the check; the bundled mnist-dcgan), --cuda-libs auto|packed|system (auto: the
# packed CUDA wheels if all their calls were carried, else the libraries the machine's
# own Python has). GANSERVE_GPU_HOME (/tmp/ganserve-gpu) holds the stash, the wheels and
# the venv, so that parts carried by earlier calls to the same machine are kept.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${GANSERVE_GPU_HOME:-/tmp/ganserve-gpu}
parts=$here/parts
stash=$home/parts
wheels=$home/wheels
venv=$home/venv
python=python3
model=$root/models/mnist-dcgan/1/model.onnx
mode=install
cuda_libs=auto

die() {
    echo "unpack_install: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --collect-only) mode=collect ;;
        --check-only | --no-install) mode=check ;;
        --parts) parts=${2:?--parts needs a folder}; shift ;;
        --python) python=${2:?--python needs a path}; shift ;;
        --model) model=${2:?--model needs a path}; shift ;;
        --cuda-libs) cuda_libs=${2:?--cuda-libs needs auto, packed or system}; shift ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
case $cuda_libs in auto | packed | system) ;; *) die "--cuda-libs: auto, packed or system" ;; esac
command -v "$python" >/dev/null || die "no $python here (pass --python)"

check_cuda() {
    if ! "$1" "$here/check_cuda.py" --model "$model"; then
        die "ONNX Runtime cannot run on CUDA with $1 ($2)"
    fi
}

if [ "$mode" = check ]; then
    check_cuda "$python" "check only, nothing installed"
    exit 0
fi

kit() { "$python" "$here/kit.py" "$@" --stash "$stash"; }
kit collect --from "$parts" || die "collecting failed (see above)"
[ "$mode" = collect ] && exit 0

manifest_field() { # a list field of the manifest, one item a line
    "$python" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))[sys.argv[2]]))' \
        "$stash/manifest.json" "$1"
}
want=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["target"]["python"])' \
    "$stash/manifest.json")
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$want" = "$have" ] || die "the wheels are for Python $want, $python is $have: pack again \
with --python-version $have, or pass --python python$want"

kit assemble --group core --out "$wheels" || die "the core group is incomplete or damaged"
groups=core
cuda_calls=$("$python" -c 'import json, sys
m = json.load(open(sys.argv[1]))
print(" ".join(c["dir"] for c in m["calls"] if c["group"] == "cuda"))' "$stash/manifest.json")
if [ "$cuda_libs" != system ] && [ -n "$cuda_calls" ]; then
    if kit assemble --group cuda --out "$wheels"; then
        groups="core cuda"
    elif [ "$cuda_libs" = packed ]; then
        die "--cuda-libs packed: carry the cuda group's calls ($cuda_calls) first"
    else
        echo "unpack_install: the cuda group is incomplete: using this machine's CUDA libraries"
    fi
fi

# shellcheck source-path=SCRIPTDIR source=venv.sh
. "$here/venv.sh"
vpy=$venv/bin/python
make_venv "$venv" "$python" "$wheels"
manifest_field requirements >"$home/requirements.txt"
pip_install -r "$home/requirements.txt" || die "installing the core wheels failed"
site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$groups" = "core cuda" ]; then
    # links left by an earlier run (below) would make pip write into the other Python
    if [ -d "$site/nvidia" ]; then find "$site/nvidia" -maxdepth 1 -type l -delete; fi
    manifest_field cuda_requirements >"$home/cuda-requirements.txt"
    pip_install -r "$home/cuda-requirements.txt" || die "installing the CUDA wheels failed"
fi
pip_install --no-deps --no-build-isolation -e "$root" || die "installing the project failed"

hint="groups installed: $groups"
if [ "$groups" = core ]; then
    # onnxruntime looks for CUDA and cuDNN under site-packages/nvidia/ beside itself:
    # link there the nvidia-* libraries of the Python the venv was made from.
    carry=${cuda_calls:-none: pack again without --no-cuda-libs}
    portions=$("$python" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null) ||
        die "$python has no nvidia-* CUDA libraries: carry the cuda group's calls ($carry)"
    mkdir -p "$site/nvidia"
    while IFS= read -r portion; do
        for lib in "$portion"/*/; do
            name=$(basename "$lib")
            [ -e "$site/nvidia/$name" ] || ln -s "${lib%/}" "$site/nvidia/$name"
        done
    done <<<"$portions"
    echo "unpack_install: CUDA libraries linked from $python's site-packages"
    hint="$hint, CUDA libraries linked from $python's; if they do not fit, carry the cuda \
group's calls ($carry) and run this again"
fi

check_cuda "$vpy" "$hint"
echo "unpack_install: ready: $vpy; next: bash benchmarks/gpu/run.sh"
