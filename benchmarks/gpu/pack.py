"""Pack onnxruntime-gpu and the server's dependencies as wheels cut into carryable parts.

Run here, with PyPI reachable (stdlib only; pip does the downloading):

    python benchmarks/gpu/pack.py [--python-version 3.12] [--no-cuda-libs] [--part-mb 37]

1. the ``[server]`` extra's requirement set (with the base dependencies, ``pip`` and the
   build backend) for the GPU machine's Python (CPython ``--python-version``, manylinux
   x86-64), pinned to the versions of ``--env-python``'s environment (onnxruntime-gpu
   included): group ``core``, what the GPU machine needs;
2. onnxruntime-gpu's ``[cuda,cudnn]`` extras (the CUDA and cuDNN wheels it was built for,
   as named in its metadata): group ``cuda``, needed only where the GPU machine's Python
   has no such libraries of its own (``--no-cuda-libs`` skips them);
3. the data sets' IDX files (``--data-root``, the shared data by default: one folder per
   data set), for training there (``train.sh``): group ``data``, laid out as they are
   here (``--no-data`` skips them);
4. every file cut into parts of at most ``--part-mb`` in ``call-NN/`` folders of
   ``--out`` (``benchmarks/gpu/parts/``, git-ignored), one folder per device call, and
   ``manifest.json`` (kit.py). A device call carries the working tree and its carried
   paths within a limit (``--carry-limit-mib``), so the default part size is that limit
   less the working tree's current size and a margin.

benchmarks/gpu/README.md says what to do with them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE) not in sys.path:  # run as a script, its folder is there already
    sys.path.insert(0, str(HERE))

from kit import Source, build_kit  # noqa: E402

DATASETS = ("mnist", "fashion-mnist")  # training/data.py's, the folders of --data-root
_MB = 1_000_000
_MIB = 1 << 20
_MAX_PART = 55 * _MB


def requirement_lines(pyproject: Path, extra: str) -> tuple[str, list[str], list[str]]:
    """The project's name, the requirements of ``extra`` (base dependencies included,
    the project's own ``name[other]`` references expanded) and its build requirements."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        sys.exit("pack: needs Python >= 3.11 (tomllib) to read pyproject.toml")
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    name = project["name"]
    extras = project.get("optional-dependencies", {})
    lines: list[str] = list(project.get("dependencies", []))
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        if current not in extras:
            sys.exit(f"pack: {pyproject} has no extra {current!r}")
        seen.add(current)
        for req in extras[current]:
            if req.replace(" ", "").startswith(f"{name}["):
                todo += req.split("[", 1)[1].split("]", 1)[0].split(",")
            else:
                lines.append(req)
    build = list(data.get("build-system", {}).get("requires", []))
    return name, list(dict.fromkeys(lines)), build


def tree_bytes(root: Path) -> int | None:
    """Size of what a device call carries of the repository: tracked files and untracked
    ones git does not ignore (and shared/ if there is one); None without git."""
    try:
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = {root / p.decode() for p in listed.split(b"\0") if p}
    if (root / "shared").is_dir():
        paths |= {p for p in (root / "shared").rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def local_pins(python: str, project: str) -> dict[str, str]:
    """Name -> version of what ``python``'s environment has installed (not the project)."""
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = {d["name"].lower(): d["version"] for d in json.loads(listed)}
    pins.pop(project, None)
    return pins


def target_flags(python_version: str, manylinux: str) -> list[str]:
    """pip's flags for wheels of CPython ``python_version`` on manylinux x86-64 with a
    glibc of at least ``manylinux`` ("2.28")."""
    major, minor = (int(v) for v in manylinux.split("."))
    abi = "cp" + python_version.replace(".", "")
    platforms = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in (abi, "abi3", "none"):
        flags += ["--abi", tag]
    for platform in platforms:
        flags += ["--platform", platform]
    return flags


def pip_download(args: list[str], dest: Path) -> list[Path]:
    """``pip download`` into a fresh ``dest``; the files it holds afterwards."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--progress-bar", "off", "-d", str(dest)]
    print("pack: " + " ".join(cmd + args), flush=True)
    subprocess.run(cmd + args, check=True)
    return sorted(p for p in dest.iterdir() if p.is_file())


def wheel_extras(wheel: Path) -> dict[str, list[str]]:
    """A wheel's extras and their requirements, from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    extras: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("Provides-Extra:"):
            extras.setdefault(line.split(":", 1)[1].strip(), [])
        elif line.startswith("Requires-Dist:") and "extra ==" in line:
            req, _, marker = line.split(":", 1)[1].partition(";")
            name = marker.split("extra ==", 1)[1].strip().strip("'\"")
            extras.setdefault(name, []).append(req.strip())
    return extras


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-version", default="3.12", help="the GPU machine's CPython X.Y")
    p.add_argument("--manylinux", default="2.28", help="its glibc (newest manylinux tag)")
    p.add_argument(
        "--env-python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="the environment whose versions are packed (onnxruntime-gpu's too)",
    )
    p.add_argument("--ort-version", help="onnxruntime-gpu version (default: --env-python's)")
    p.add_argument("--no-pins", action="store_true", help="newest versions, not the env's")
    p.add_argument("--no-cuda-libs", action="store_true", help="skip the [cuda,cudnn] extras")
    p.add_argument(
        "--data-root",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="the data sets to carry for training (a folder per data set)",
    )
    p.add_argument("--no-data", action="store_true", help="carry no data (benchmark only)")
    p.add_argument("--out", type=Path, default=HERE / "parts")
    p.add_argument("--part-mb", type=float, help="part and call size in MB (default: auto)")
    p.add_argument("--carry-limit-mib", type=float, default=64.0, help="what one call carries")
    p.add_argument("--margin-mib", type=float, default=4.0, help="room for the tree to grow")
    p.add_argument("--keep-downloads", action="store_true", help="keep <out>/.download")
    return p.parse_args(argv)


def part_size(args: argparse.Namespace) -> int:
    if args.part_mb is not None:
        return int(args.part_mb * _MB)
    tree = tree_bytes(ROOT)
    if tree is None:
        print(f"pack: no git: parts of {_MAX_PART / _MB:.0f} MB", file=sys.stderr)
        return _MAX_PART
    room = int((args.carry_limit_mib - args.margin_mib) * _MIB) - tree
    print(
        f"pack: the working tree is {tree / _MB:.1f} MB; a call carries "
        f"{args.carry_limit_mib:g} MiB in all, {args.margin_mib:g} MiB kept free: "
        f"parts of at most {min(room, _MAX_PART) / _MB:.1f} MB"
    )
    if room < 4 * _MB:
        sys.exit("pack: the working tree leaves no room for parts; pass --part-mb")
    return min(room, _MAX_PART)


def data_sources(root: Path) -> list[Source]:
    """The IDX files of every data set under ``root``, as ``<data set>/<file>``."""
    found = [
        Source(path, "data", f"{dataset}/{path.name}")
        for dataset in DATASETS
        for path in sorted((root / dataset).glob("*-ubyte.gz"))
    ]
    if not found:
        sys.exit(f"pack: no data sets under {root} ({', '.join(DATASETS)}); pass "
                 "--data-root DIR, or --no-data for the benchmark alone")  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name, reqs, build = requirement_lines(ROOT / "pyproject.toml", "server")
    pins = {} if args.no_pins else local_pins(args.env_python, name)
    ort = args.ort_version or pins.get("onnxruntime-gpu") or pins.get("onnxruntime")
    if not ort:
        sys.exit(f"pack: no onnxruntime in {args.env_python}; pass --ort-version")
    pins["onnxruntime-gpu"] = ort
    part_bytes = part_size(args)
    dl = args.out / ".download"
    dl.mkdir(parents=True, exist_ok=True)
    (dl / "requirements.txt").write_text("\n".join([*reqs, *build, "pip"]) + "\n")
    (dl / "constraints.txt").write_text("".join(f"{k}=={v}\n" for k, v in sorted(pins.items())))
    flags = target_flags(args.python_version, args.manylinux)
    flags += ["-c", str(dl / "constraints.txt")]
    core = pip_download(["-r", str(dl / "requirements.txt"), *flags], dl / "core")
    sources = [Source(p, "core") for p in core]
    if not args.no_data:  # before cuda: the optional group comes last
        sources += data_sources(args.data_root)
    cuda_reqs: list[str] = []
    if not args.no_cuda_libs:
        ort_wheel = next(p for p in core if p.name.startswith("onnxruntime_gpu-"))
        extras = wheel_extras(ort_wheel)
        chosen = [e for e in ("cuda", "cudnn") if e in extras]
        cuda_reqs = [r for e in chosen for r in extras[e]]
        print(f"pack: onnxruntime-gpu {ort} extras {chosen}: {', '.join(cuda_reqs) or 'none'}")
        if chosen:
            spec = f"onnxruntime-gpu[{','.join(chosen)}]=={ort}"
            cuda = pip_download([spec, *flags], dl / "cuda")
            have = {p.name for p in core}
            sources += [Source(p, "cuda") for p in cuda if p.name not in have]
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": {"python": args.python_version, "manylinux": args.manylinux},
        "onnxruntime_gpu": ort,
        "requirements": [*reqs, *build, "pip"],
        "cuda_requirements": cuda_reqs,
    }
    manifest = build_kit(sources, args.out, part_bytes, part_bytes, meta)
    if not args.keep_downloads:
        shutil.rmtree(dl)
    for group in dict.fromkeys(c["group"] for c in manifest["calls"]):
        files = [f for f in manifest["files"] if f["group"] == group]
        calls = [c for c in manifest["calls"] if c["group"] == group]
        size = sum(f["size"] for f in files)
        parts = sum(len(f["parts"]) for f in files)
        print(
            f"pack: group {group}: {len(files)} files, {size / _MB:.1f} MB, {parts} parts "
            f"in {len(calls)} calls ({calls[0]['dir']} .. {calls[-1]['dir']})"
        )
    for call in manifest["calls"]:
        print(
            f"  {call['dir']} ({call['group']}, {call['bytes'] / _MB:.1f} MB): "
            + " ".join(call["parts"])
        )
    print(f"pack: {args.out}/manifest.json; next: benchmarks/gpu/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
