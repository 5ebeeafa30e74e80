"""Files cut into hashed parts, grouped into carries, and put back together (stdlib only).

The GPU machines have no network: files reach them only with the working tree of a
device call, a few tens of MB at a time. So large files (wheels) are cut into parts of
at most ``part_bytes``, and the parts are grouped into *calls*: folders of at most
``call_bytes`` each, ``<out>/call-NN/``, one carried per device call. The manifest
(``<out>/manifest.json``, copied into every call folder so that any one carry brings it)
names every file with its size and sha256, and every part with its size, sha256 and
call. On the GPU machine the parts are *collected* call by call into a stash (each part's
hash checked before it is kept), then *assembled* into the files (each part checked
again, then the whole file's size and hash).

    python kit.py collect --from DIR [--from DIR ...] --stash DIR
    python kit.py assemble --stash DIR --out DIR [--group core ...]
    python kit.py status --stash DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FORMAT",
    "KitError",
    "assemble",
    "build_kit",
    "collect",
    "load_manifest",
    "missing_calls",
    "sha256_file",
]

FORMAT = "ganserve-gpu-kit/1"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class KitError(Exception):
    """A part or file that is missing or does not match the manifest."""


@dataclass(frozen=True)
class Source:
    """A file to pack and the group it belongs to (groups are installed separately).
    ``name``: where the file goes below the folder it is assembled into, ``/`` between
    folders (default: the file's own name), so that files of the same name in different
    folders (the data sets' IDX files) can travel together."""

    path: Path
    group: str
    name: str | None = None

    @property
    def target(self) -> str:
        name = self.name or self.path.name
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a relative path of plain names: {name!r}")
        return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _split(path: Path, dest: Path, part_bytes: int, stem: str) -> tuple[str, list[dict]]:
    """Cut ``path`` into ``dest/<stem>.partNNN`` of at most ``part_bytes``; the whole
    file's sha256 and the parts (name, size, sha256), hashed in the same pass."""
    whole = hashlib.sha256()
    parts: list[dict] = []
    with open(path, "rb") as src:
        while True:
            name = f"{stem}.part{len(parts):03d}"
            digest, size = hashlib.sha256(), 0
            with open(dest / name, "wb") as out:
                while size < part_bytes and (chunk := src.read(min(_CHUNK, part_bytes - size))):
                    out.write(chunk)
                    digest.update(chunk)
                    whole.update(chunk)
                    size += len(chunk)
            if size == 0 and parts:  # the file ended exactly at a part boundary
                (dest / name).unlink()
                break
            parts.append({"name": name, "size": size, "sha256": digest.hexdigest()})
            if size < part_bytes:
                break
    return whole.hexdigest(), parts


def _assign_calls(parts: list[dict], call_bytes: int, first: int) -> list[list[dict]]:
    """First-fit decreasing: the parts of one group into as few calls as fit."""
    calls: list[list[dict]] = []
    room: list[int] = []
    for part in sorted(parts, key=lambda p: (-p["size"], p["name"])):
        fits = [i for i, left in enumerate(room) if part["size"] <= left]
        if not fits:
            calls.append([])
            room.append(call_bytes)
        i = fits[0] if fits else len(calls) - 1
        calls[i].append(part)
        room[i] -= part["size"]
        part["call"] = first + i
    return calls


def build_kit(
    sources: Sequence[Source],
    out: Path,
    part_bytes: int,
    call_bytes: int | None = None,
    meta: dict | None = None,
) -> dict:
    """Cut ``sources`` into ``out/call-NN/`` folders and write the manifest; returns it.

    Groups keep the order of their first file in ``sources`` and never share a call, so
    that the calls of the first group come first (the rest may be optional). Whatever
    ``out`` held of an earlier kit (call folders, manifest) is removed first.
    """
    call_bytes = call_bytes or part_bytes
    if part_bytes < 1 or call_bytes < part_bytes:
        raise ValueError(f"need 1 <= part_bytes <= call_bytes, got {part_bytes}, {call_bytes}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("call-*"):
        shutil.rmtree(old)
    (out / MANIFEST).unlink(missing_ok=True)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files: list[dict] = []
    for source in sources:
        name = source.target
        if any(f["name"] == name for f in files):
            raise ValueError(f"two files would be assembled as {name!r}")
        # parts lie side by side in one folder: the path's folders join the stem
        digest, parts = _split(source.path, staging, part_bytes, name.replace("/", "--"))
        size = source.path.stat().st_size
        entry = {"name": name, "size": size, "sha256": digest}
        files.append(entry | {"group": source.group, "parts": parts})
    calls: list[dict] = []
    for group in dict.fromkeys(f["group"] for f in files):
        parts = [p for f in files if f["group"] == group for p in f["parts"]]
        for members in _assign_calls(parts, call_bytes, len(calls) + 1):
            folder = f"call-{len(calls) + 1:02d}"
            (out / folder).mkdir()
            for part in members:
                os.replace(staging / part["name"], out / folder / part["name"])
            calls.append(
                {
                    "dir": folder,
                    "group": group,
                    "bytes": sum(p["size"] for p in members),
                    "parts": sorted(p["name"] for p in members),
                }
            )
    staging.rmdir()
    manifest = {
        "format": FORMAT,
        **(meta or {}),
        "part_bytes": part_bytes,
        "call_bytes": call_bytes,
        "files": files,
        "calls": calls,
    }
    text = json.dumps(manifest, indent=1)
    (out / MANIFEST).write_text(text)
    for call in calls:
        (out / call["dir"] / MANIFEST).write_text(text)
    return manifest


def load_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path}: not a manifest of {FORMAT}")
    return manifest


def _parts(manifest: dict) -> dict[str, dict]:
    return {p["name"]: p for f in manifest["files"] for p in f["parts"]}


def _check_part(path: Path, part: dict) -> str | None:
    """Why ``path`` is not ``part`` (size or sha256), or None if it is."""
    size = path.stat().st_size
    if size != part["size"]:
        return f"{size} bytes, the manifest says {part['size']}"
    digest = sha256_file(path)
    if digest != part["sha256"]:
        return f"sha256 {digest[:16]}..., the manifest says {part['sha256'][:16]}..."
    return None


def collect(manifest: dict, sources: Iterable[Path], stash: Path) -> list[str]:
    """Copy the parts found under ``sources`` (searched recursively) into ``stash``,
    each checked first; returns the names of the parts copied. A part that does not
    match raises :class:`KitError` (the stash keeps only good parts)."""
    wanted = _parts(manifest)
    stash.mkdir(parents=True, exist_ok=True)
    copied: list[str] = []
    for root in sources:
        for path in sorted(root.rglob("*.part[0-9][0-9][0-9]")):
            part = wanted.get(path.name)
            kept = stash / path.name
            if part is None or (kept.exists() and kept.stat().st_size == part["size"]):
                continue  # not ours, or stashed by an earlier call (assemble checks it)
            problem = _check_part(path, part)
            if problem is not None:
                raise KitError(f"part {path} is damaged ({problem}); carry it again")
            tmp = stash / (path.name + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(stash / path.name)
            copied.append(path.name)
    return copied


def missing_calls(manifest: dict, stash: Path, groups: Iterable[str] | None = None) -> list[str]:
    """The call folders of ``groups`` (all: None) with a part not yet in ``stash``."""
    chosen = set(groups) if groups is not None else None
    return [
        call["dir"]
        for call in manifest["calls"]
        if (chosen is None or call["group"] in chosen)
        and not all((stash / name).exists() for name in call["parts"])
    ]


def assemble(manifest: dict, stash: Path, out: Path, groups: Iterable[str]) -> list[Path]:
    """Join the parts of every file of ``groups`` into ``out``, checking each part and
    then the whole file; returns the files. Raises :class:`KitError` naming the calls
    still to carry, or the part or file that does not match."""
    chosen = set(groups)
    packed = {entry["group"] for entry in manifest["files"]}
    if not chosen <= packed:  # not packed at all: nothing to carry would bring it
        raise KitError(
            f"group {', '.join(sorted(chosen - packed))} is not in this pack "
            f"(it has {', '.join(sorted(packed)) or 'no group'}): pack it with pack.py"
        )
    missing = missing_calls(manifest, stash, chosen)
    if missing:
        raise KitError(
            f"parts missing from {stash}: carry {', '.join(missing)} (and collect them) first"
        )
    out.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    for entry in manifest["files"]:
        if entry["group"] not in chosen:
            continue
        target = out / entry["name"]
        same_size = target.exists() and target.stat().st_size == entry["size"]
        if same_size and sha256_file(target) == entry["sha256"]:  # assembled before
            done.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as joined:
            for part in entry["parts"]:
                problem = _check_part(stash / part["name"], part)
                if problem is not None:
                    (stash / part["name"]).unlink()  # so that the next carry replaces it
                    joined.close()
                    tmp.unlink()
                    raise KitError(
                        f"part {part['name']} in the stash is damaged ({problem}); "
                        f"carry call-{part['call']:02d} again"
                    )
                with open(stash / part["name"], "rb") as src:
                    shutil.copyfileobj(src, joined, _CHUNK)
        if tmp.stat().st_size != entry["size"] or sha256_file(tmp) != entry["sha256"]:
            tmp.unlink()
            raise KitError(f"{entry['name']}: the joined parts do not match its sha256")
        tmp.replace(target)
        done.append(target)
    return done


def _find_manifest(sources: Sequence[Path], stash: Path) -> Path:
    for root in [*sources, stash]:
        found = sorted(root.rglob(MANIFEST)) if root.is_dir() else []
        if found:
            return found[0]
    where = ", ".join(str(p) for p in [*sources, stash])
    raise KitError(f"no {MANIFEST} in {where}: carry a call folder of the kit")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("collect", "assemble", "status"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--stash", type=Path, required=True, help="where parts are kept")
        cmd.add_argument("--from", dest="sources", type=Path, action="append", default=[])
        cmd.add_argument("--group", action="append", help="assemble: these groups (default all)")
        cmd.add_argument("--out", type=Path, help="assemble: where the files go")
    args = p.parse_args(argv)
    if args.command == "assemble" and args.out is None:
        p.error("assemble needs --out DIR")
    try:
        path = _find_manifest(args.sources, args.stash)
        manifest = load_manifest(path)
        args.stash.mkdir(parents=True, exist_ok=True)
        if path.parent != args.stash:
            shutil.copyfile(path, args.stash / MANIFEST)
        if args.command == "collect":
            copied = collect(manifest, args.sources, args.stash)
            print(f"kit: {len(copied)} part(s) checked and stashed in {args.stash}")
        elif args.command == "assemble":
            groups = args.group or sorted({f["group"] for f in manifest["files"]})
            files = assemble(manifest, args.stash, args.out, groups)
            size = sum(f.stat().st_size for f in files)
            print(f"kit: {len(files)} file(s), {size / 1e6:.1f} MB, checked, in {args.out}")
        for group in dict.fromkeys(c["group"] for c in manifest["calls"]):
            missing = missing_calls(manifest, args.stash, [group])
            total = sum(c["group"] == group for c in manifest["calls"])
            state = "complete" if not missing else "still to carry: " + " ".join(missing)
            print(f"kit: group {group}: {total - len(missing)}/{total} calls stashed; {state}")
        return 0
    except KitError as exc:
        print(f"kit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
