"""The user commands as subprocesses (``python -m ganserve ...``) against a real server:
files decode to the expected sizes, errors give one line and a documented exit code."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from certs import make_certs
from PIL import Image

from ganserve.cli import main
from ganserve.clients import GanClient, _commands

ROOT = Path(__file__).resolve().parent.parent


def ganserve(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "ganserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = ganserve(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_models_table_and_json(server) -> None:
    lines = ok("--target", server.target, "models").splitlines()
    assert lines[0].split() == [
        "NAME", "VERSION", "KIND", "LATENT", "CLASSES", "FID", "PRECISION", "RECALL", "STATE",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["tiny-cond"][1:6] == ["1", "conditional", "8", "10", "123"]
    assert rows["tiny-uncond"][-1] == "ready"
    listed = json.loads(ok("models", "--json", "--target", server.target))
    assert {m["name"] for m in listed} == {"tiny-cond", "tiny-uncond"}


def test_sample_grid_and_npy(server, tmp_path: Path) -> None:
    grid = tmp_path / "sevens.png"
    args = ("--model", "tiny-cond", "--label", "7", "--count", "6", "--seed", "1")
    out = ok("--target", server.target, "sample", *args, "--cols", "3", "--scale", "1",
             "--out", str(grid))  # fmt: skip
    assert "6 images" in out and "seeds 1..6" in out
    with Image.open(grid) as img:
        assert img.format == "PNG" and img.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)
    # connection options after the sub-command work too
    array_path = tmp_path / "sevens.npy"
    ok("sample", *args, "--truncation", "0.8", "--out", str(array_path), "--target", server.target)
    array = np.load(array_path)
    with GanClient(server.target) as client:
        expected = client.sample("tiny-cond", 6, seed=1, label=7, truncation=0.8).images
    np.testing.assert_array_equal(array, expected)


def test_interpolate_gif_and_strip(server, tmp_path: Path) -> None:
    keyframes = ("--from-seed", "1", "--to-seed", "2", "--from-label", "3", "--to-label", "class8")
    common = ("--target", server.target, "interpolate", "--model", "tiny-cond", *keyframes)
    common += ("--steps", "6")
    gif = tmp_path / "morph.gif"
    ok(*common, "--via-seed", "5", "--via-label", "5", "--out", str(gif))
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == 6 and img.size == (112, 112)
    strip = tmp_path / "morph.png"
    ok(*common, "--method", "lerp", "--scale", "1", "--out", str(strip))
    with Image.open(strip) as img:
        assert img.size == (6 * 28, 28)


def test_arithmetic_picture(server, tmp_path: Path) -> None:
    out = tmp_path / "sum.png"
    ok("--target", server.target, "arithmetic", "--model", "tiny-cond", "--label", "3",
       "--term", "+1:seeds=1,2,3", "--term", "-1:seeds=4,5", "--term", "0.5:seed=6",
       "--scale", "2", "--out", str(out))  # fmt: skip
    with Image.open(out) as img:
        # 3 terms + result of 56 px, 3 operator cells of 28 px ("+", "-", "="), a 12 px label row
        assert img.size == (4 * 56 + 3 * 28, 56 + 12)


def test_closed_stdout_pipe_ends_quietly(server) -> None:
    """`ganserve models | head -1`: the reader leaves early; no error text, SIGPIPE status."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganserve", "--target", server.target, "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**clean, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes anything
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert err == b""


def test_health(server) -> None:
    assert ok("health", "--target", server.target).strip() == "SERVING"


GIF = ("--from-seed", "1", "--to-seed", "2")
FPS, BAD = "--fps: must be a finite number > 0", ("0", "-5", "nan")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("sample", "--model", "nope"), 3, "'nope' not found"),
        (("sample", "--model", "tiny-uncond", "--label", "1"), 2, "unconditional"),
        (("sample", "--model", "tiny-cond", "--label", "banana"), 2, "unknown class 'banana'"),
        # was 1, as for a file that cannot be written; a missing folder is a bad --out
        (("sample", "--model", "tiny-cond", "--out", "/no/such/dir/x.png"), 2, "/no/such/dir"),
        (("interpolate", "--model", "tiny-cond", *GIF, "--out", "/no/such/dir/m.gif"), 2,
         "no directory /no/such/dir"),
        # was: "invalid literal for int() with base 10: '--3'"
        (("sample", "--model", "tiny-cond", "--label=--3"), 2,
         "unknown class '--3' for tiny-cond: a class is an index or one of class0, "),
        (("sample", "--model", "tiny-cond", "--label", "1,²"), 2, "unknown class '²'"),
        # was: "2 labels for 3 keyframes", which named no option
        (("interpolate", "--model", "tiny-cond", *GIF, "--via-seed", "5", "--from-label", "0",
          "--to-label", "1"), 2, "0 --via-label for 1 --via-seed: with classes, give one "
         "--via-label per --via-seed"),
        (("arithmetic", "--model", "tiny-cond", "--term", "1:colors=3"), 2, "bad term"),
        (("interpolate", "--model", "tiny-cond", "--from-seed", "1"), 2, "--to-seed"),
        # was: a GIF at 12 fps (0) or 50 fps (-5), and "cannot convert float NaN" (nan)
        *((("interpolate", "--model", "tiny-uncond", *GIF, "--fps", fps), 2, FPS) for fps in BAD),
        # was: "Deadline Exceeded", exit 4, as if the server had been too slow
        (("models", "--timeout", "-1"), 2, "--timeout: must be a finite number > 0"),
        # was: the repr of grpc's _InactiveRpcError (the health service sends no message)
        (("health", "--service", "nope"), 3, "unknown service 'nope'"),
    ],
)  # fmt: skip
def test_user_errors_exit_codes_without_traceback(server, args, code, message, capsys) -> None:
    # In-process (the same main() the console script runs) to keep the suite fast;
    # an exception escaping main() would fail the test with its traceback.
    try:
        returned = main(["--target", server.target, *args])
    except SystemExit as exc:  # argparse's own usage errors
        returned = exc.code
    assert returned == code
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("model", "option", "value", "field"),
    [
        ("tiny-uncond", "--seed", "-1", "seed"),
        ("tiny-uncond", "--seed", "18446744073709551616", "seed"),
        ("tiny-cond", "--label", "2147483648", "label"),
    ],
)
def test_a_request_refused_before_sending_ends_in_one_line(
    server, tmp_path: Path, model: str, option: str, value: str, field: str
) -> None:
    """The refusal was raised in the worker thread that makes the stream: a thread
    traceback, and the command waited for ever. (A subprocess: a hang fails the test.)"""
    out = tmp_path / "x.png"
    args = ("sample", "--model", model, option, value, "--out", str(out))
    done = ganserve("--target", server.target, *args, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ganserve: error: {field}"), done.stderr
    assert not list(tmp_path.iterdir())


def test_pictures_are_written_whole_or_not_at_all(server, tmp_path: Path, capsys) -> None:
    """Ctrl-C while the grid was saved left a truncated file, and the message said
    "not written": outputs go to a temporary file that is renamed once complete."""
    out = tmp_path / "grid.png"
    out.write_bytes(b"an older grid")
    with pytest.raises(KeyboardInterrupt), _commands.replacing(str(out)) as tmp:
        tmp.write_bytes(b"half a PNG")
        raise KeyboardInterrupt  # as a Ctrl-C lands while PIL writes
    assert out.read_bytes() == b"an older grid"
    assert list(tmp_path.iterdir()) == [out]
    # every output of every command is written so, and no temporary file stays behind
    target = ("--target", server.target)
    morph = ("interpolate", "--model", "tiny-uncond", *GIF, "--steps", "3")
    outputs = {
        "grid.png": ("sample", "--model", "tiny-uncond", "--count", "4"),
        "morph.gif": morph,
        "strip.png": morph,
        "frames.npy": morph,
        "sum.png": ("arithmetic", "--model", "tiny-uncond", "--term", "1:seeds=1"),
    }
    for name, args in outputs.items():
        assert main([*target, *args, "--out", str(tmp_path / name)]) == 0, capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outputs)
    with Image.open(out) as img:
        assert img.format == "PNG"
    assert np.load(tmp_path / "frames.npy").shape == (3, 28, 28)


def test_an_output_that_is_a_symbolic_link_writes_the_file_it_points_to(
    server, tmp_path: Path, capsys
) -> None:
    """The rename into place replaced the link with a regular file, leaving the file it
    pointed to (e.g. in a shared results folder) as it was."""
    shared, here = tmp_path / "shared", tmp_path / "here"
    shared.mkdir()
    here.mkdir()
    target = ("--target", server.target)
    outputs = {
        "grid.png": ("sample", "--model", "tiny-uncond", "--count", "4"),
        "array.npy": ("sample", "--model", "tiny-uncond", "--count", "4"),
        "morph.gif": ("interpolate", "--model", "tiny-uncond", *GIF, "--steps", "3"),
    }
    for name, args in outputs.items():
        (shared / name).write_bytes(b"an older file")
        (here / name).symlink_to(shared / name)
        assert main([*target, *args, "--out", str(here / name)]) == 0, capsys.readouterr()
        assert (here / name).is_symlink(), name
        assert (shared / name).read_bytes() != b"an older file", name
    assert np.load(here / "array.npy").shape == (4, 28, 28)
    assert sorted(p.name for p in shared.iterdir()) == sorted(outputs)  # no temporary file


def test_unreachable_server() -> None:
    done = ganserve("--target", "127.0.0.1:1", "--timeout", "5", "models")
    assert done.returncode == 4 and "127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_token_from_environment(start_server, tiny_model_repo) -> None:
    secured = start_server(tiny_model_repo, "--auth-token", "s3cret")
    denied = ganserve("--target", secured.target, "models")
    assert denied.returncode == 5 and "Traceback" not in denied.stderr
    assert "tiny-cond" in ok("--target", secured.target, "models", env={"GANSERVE_TOKEN": "s3cret"})
    assert "tiny-cond" in ok("models", "--token", "s3cret", "--target", secured.target)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"--tls-ca": "ca.pem", "--tls-cert": "client.pem", "--tls-key": "server.key"},
         "TLS key {d}/server.key is not the key of certificate {d}/client.pem"),
        ({"--tls-ca": "client.key"}, "TLS CA file {d}/client.key holds no PEM certificate"),
        ({"--tls-cert": "client.key", "--tls-key": "client.key"},
         "TLS client certificate {d}/client.key holds no PEM certificate"),
        ({"--tls-cert": "client.pem", "--tls-key": "client.pem"},
         "TLS key {d}/client.pem holds no usable PEM private key"),
    ],
)  # fmt: skip
def test_unusable_tls_files_are_named_before_connecting(
    server, tmp_path: Path, capsys, files: dict[str, str], message: str
) -> None:
    """gRPC takes such files, and every call failed "Connection refused" (exit 4), the
    cause only in gRPC core's log lines."""
    d = make_certs(tmp_path, "DNS:ganserve.test")
    expected = message.format(d=d)
    paths = {option: str(d / name) for option, name in files.items()}
    options = [part for option, path in paths.items() for part in (option, path)]
    assert main(["--target", server.target, *options, "models"]) == 2
    assert capsys.readouterr().err == f"ganserve: error: {expected}\n"
    keywords = {option[2:].replace("-", "_"): path for option, path in paths.items()}
    with pytest.raises(ValueError) as error:
        GanClient(server.target, **keywords)
    assert str(error.value) == expected


def test_a_token_is_stripped_and_one_grpc_cannot_send_is_named(
    start_server, tiny_model_repo
) -> None:
    """A token ending with a newline (``$(cat token)``, a secret file) failed every call
    "Invalid metadata" (exit 1) amid gRPC core log lines; the server strips its own."""
    secured = start_server(tiny_model_repo, "--auth-token", "s3cret")
    listed = ok("--target", secured.target, "models", env={"GANSERVE_TOKEN": "s3cret\n"})
    assert "tiny-cond" in listed
    with GanClient(secured.target, token=" s3cret\r\n") as client:
        assert {m.name for m in client.list_models()} == {"tiny-cond", "tiny-uncond"}
    for token, problem in (("s\x7fcret", "non-printable"), ("sécret", "non-ASCII")):
        done = ganserve("--target", secured.target, "models", env={"GANSERVE_TOKEN": token})
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"ganserve: error: the token has a {problem} character at position 2: "
            "a bearer token is printable ASCII\n"
        )
        with pytest.raises(ValueError, match=problem):
            GanClient(secured.target, token=token)


# ------------------------------------------------ pre-flight, progress, Ctrl-C
def sample_calls(scrape, proc) -> float:
    """Sample + SampleStream requests the server has counted so far."""
    return sum(
        value
        for (name, labels), value in scrape(proc).items()
        if name == "ganserve_requests_total" and dict(labels).get("method", "").startswith("Sample")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # was: sampling started silently and needed ~78 GB for the grid
        (("sample", "--model", "tiny-uncond", "--count", "100000000", "--out", "x.png"),
         "a grid of 100,000,000 images at --scale 2 would be 600004x600004"),
        (("sample", "--model", "tiny-uncond", "--count", "30000", "--out", "x.png"),
         "or write an array: --out FILE.npy"),
        (("sample", "--model", "tiny-uncond", "--out", "x.jpgx"), "unknown suffix"),
        (("interpolate", "--model", "tiny-uncond", *GIF, "--steps", "4000", "--scale", "8",
          "--out", "m.gif"), "a GIF of 4000 steps at --scale 8 would be 4000 frames of 224x224"),
        (("interpolate", "--model", "tiny-uncond", *GIF, "--steps", "4000", "--scale", "8",
          "--out", "m.png"), "a strip of 4000 frames"),
        (("arithmetic", "--model", "tiny-uncond", "--term", "1:seeds=1", "--scale", "3000"),
         "the equation picture at --scale 3000"),
    ],
)  # fmt: skip
def test_an_output_too_large_is_refused_before_the_server_is_asked(
    server, scrape, tmp_path: Path, args, message, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = sample_calls(scrape, server)
    assert main(["--target", server.target, *args]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("ganserve: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert sample_calls(scrape, server) == before  # nothing generated
    assert not list(tmp_path.iterdir())  # nothing written


def generation_calls(scrape, proc) -> float:
    """Sample, SampleStream, Interpolate and Arithmetic requests counted so far."""
    methods = ("Sample", "SampleStream", "Interpolate", "Arithmetic")
    return sum(
        value
        for (name, labels), value in scrape(proc).items()
        if name == "ganserve_requests_total" and dict(labels).get("method") in methods
    )


@pytest.mark.parametrize(
    ("fps", "message", "fastest_ok"),
    [
        # was refused by the GIF writer only after the server made the frames
        ("0.001", "a GIF frame lasts at most 655.35 s: raise fps", None),
        # found in review: --fps 1000 made a GIF of 20 ms frames (50 fps) without a word
        (
            "60",
            "a GIF frame lasts at least 20 ms (viewers play shorter ones slower): "
            "lower fps to at most 50, got 60",
            "50",
        ),
    ],
    ids=["too slow", "too fast"],
)
def test_a_gif_pace_out_of_range_is_refused_before_the_server_is_asked(
    server, scrape, tmp_path: Path, capsys, fps: str, message: str, fastest_ok: str | None
) -> None:
    before = generation_calls(scrape, server)
    out = tmp_path / "m.gif"
    args = ("interpolate", "--model", "tiny-uncond", *GIF, "--fps", fps, "--out", str(out))
    assert main(["--target", server.target, *args]) == 2
    assert capsys.readouterr().err.startswith(f"ganserve: error: {message}")
    assert generation_calls(scrape, server) == before
    assert not list(tmp_path.iterdir())
    if fastest_ok is not None:
        args = ("interpolate", "--model", "tiny-uncond", *GIF, "--fps", fastest_ok)
        assert main(["--target", server.target, *args, "--out", str(out)]) == 0
        with Image.open(out) as gif:
            assert gif.info["duration"] == 20


def test_an_array_larger_than_the_free_disk_is_refused(server, tmp_path: Path, capsys) -> None:
    count = 2**31 - 1  # the most one request may ask for: 6.7 TB of 28x28 float32
    if shutil.disk_usage(tmp_path).free >= count * 28 * 28 * 4:
        pytest.skip("more than 6.7 TB free: the array would fit")
    out = tmp_path / "x.npy"
    args = ("sample", "--model", "tiny-uncond", "--count", str(count), "--out", str(out))
    assert main(["--target", server.target, *args]) == 2
    stderr = capsys.readouterr().err
    assert "make 6.7 TB, more than the" in stderr and "free for" in stderr
    assert not list(tmp_path.iterdir())


def test_progress_only_when_a_request_takes_more_than_a_moment(server, tmp_path: Path) -> None:
    """stderr is a pipe here (no terminal): a quick request prints no bar; --progress
    shows one from the start; --no-progress none at all."""
    common = ("--target", server.target, "sample", "--model", "tiny-uncond", "--seed", "1")
    quick = ganserve(*common, "--out", str(tmp_path / "a.png"))
    assert quick.returncode == 0 and quick.stderr == ""
    forced = ganserve(*common, "--progress", "--out", str(tmp_path / "b.png"))
    assert forced.returncode == 0 and "16/16" in forced.stderr
    off = ganserve(*common, "--no-progress", "--count", "20000", "--out", str(tmp_path / "c.npy"))
    assert off.returncode == 0 and off.stderr == ""
    array = np.load(tmp_path / "c.npy")
    assert array.shape == (20000, 28, 28) and array.dtype == np.float32
    with GanClient(server.target) as client:
        np.testing.assert_array_equal(
            array[-3:], client.sample("tiny-uncond", 3, seed=19998).images
        )


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT delivered and not ignored, as a shell's
    foreground job has it. The test process's own state (threads of earlier tests may
    leave SIGINT blocked or ignored, which a child inherits) must not decide whether
    the CLI can be interrupted."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sigint_state(pid: int) -> str:
    """The child's blocked and ignored signal masks, for a failure message."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return "(no /proc)"
    return " ".join(
        line.replace("\t", "")
        for line in status.read_text().splitlines()
        if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
    )


@pytest.mark.parametrize(
    "args",
    [
        ("sample", "--model", "tiny-uncond", "--count", "4", "--out", "dir.png"),
        ("sample", "--model", "tiny-uncond", "--count", "4", "--out", "dir.npy"),
        ("interpolate", "--model", "tiny-uncond", *GIF, "--out", "dir.gif"),
        ("arithmetic", "--model", "tiny-uncond", "--term", "1:seeds=1", "--out", "dir.png"),
    ],
)
def test_an_output_that_is_a_directory_is_refused_before_the_server_is_asked(
    server, scrape, tmp_path: Path, args, capsys, monkeypatch
) -> None:
    """Found in review: the request ran to its end, then failed (exit 1) naming the
    temporary file it could not rename onto the directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / args[-1]).mkdir()
    before = sample_calls(scrape, server) + generation_calls(scrape, server)
    assert main(["--target", server.target, *args]) == 2
    assert (
        capsys.readouterr().err == f"ganserve: error: cannot write {args[-1]}: it is a directory\n"
    )
    assert sample_calls(scrape, server) + generation_calls(scrape, server) == before
    assert [p.name for p in tmp_path.iterdir()] == [args[-1]]


@pytest.mark.parametrize("command", ["sample", "interpolate"])
def test_an_npy_suffix_in_capitals_writes_an_array(server, tmp_path: Path, command) -> None:
    """Found in review: interpolate --out M.NPY failed after its work (np.save added
    ".npy" to the temporary name, which was then renamed from a file never written) and
    left that file behind; sample --out x.NPY was refused as an unknown picture suffix."""
    out = tmp_path / "M.NPY"
    extra = ("--count", "3") if command == "sample" else (*GIF, "--steps", "3")
    ok("--target", server.target, command, "--model", "tiny-uncond", *extra, "--out", str(out))
    assert np.load(out).shape[0] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["M.NPY"]


def test_ctrl_c_during_a_long_stream_says_how_far_it_got(server, tmp_path: Path) -> None:
    """A real SIGINT to the CLI once its progress shows (no terminal: stderr is a pipe):
    exit 130, the stream cancelled, one line instead of a traceback, no partial file."""
    out = tmp_path / "many.npy"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    seen: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "ganserve", "--target", server.target, "sample",
         "--model", "tiny-uncond", "--count", "1000000", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=clean,
        preexec_fn=_sigint_as_in_a_terminal,
    ) as proc:  # fmt: skip
        stream = proc.stderr
        assert stream is not None
        reader = threading.Thread(target=lambda: seen.extend(iter(lambda: stream.read(1), "")))
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while "img/s" not in "".join(seen):  # the bar appears after a moment
                assert proc.poll() is None, f"ended early: {''.join(seen)}"
                assert time.monotonic() < deadline, f"no progress within 60 s: {''.join(seen)}"
                time.sleep(0.02)  # polling interval, not a wait for an event
            dispositions = _sigint_state(proc.pid)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
            reader.join(timeout=10)
            assert code == 130, f"{dispositions}\n{''.join(seen)}"
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(timeout=10)
    stderr = "".join(seen)
    lines = stderr.strip().splitlines()
    assert lines[0] == (
        "ganserve: warning: 1,000,000 images of 1x28x28 float32 make 3.1 GB in " + str(out)
    )
    done = re.fullmatch(r"ganserve: interrupted after (\d+) of 1000000 images", lines[-1])
    assert done is not None, stderr
    assert 0 < int(done.group(1)) < 1_000_000
    assert "Traceback" not in stderr
    assert not list(tmp_path.iterdir())  # the partial array is removed


def test_sigterm_during_a_long_stream_leaves_no_partial_file(server, tmp_path: Path) -> None:
    """SIGTERM (``timeout``, ``kill``, a container stop) ended the process at once and
    left the full-size temporary ``.npy`` behind; it now exits 143 after the cleanup."""
    out = tmp_path / "many.npy"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    with subprocess.Popen(
        [sys.executable, "-m", "ganserve", "--target", server.target, "sample",
         "--model", "tiny-uncond", "--count", "1000000", "--no-progress", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=clean,
    ) as proc:  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not list(tmp_path.iterdir()):  # the array is made at the first chunk
                assert proc.poll() is None, "ended before its first chunk"
                assert time.monotonic() < deadline, "no chunk within 60 s"
                time.sleep(0.02)  # polling interval, not a wait for an event
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 143, stderr
    assert "Traceback" not in stderr
    assert not list(tmp_path.iterdir())


def test_a_bare_host_dials_port_50051(start_server, tiny_model_repo) -> None:
    """`--target 127.0.0.1` reaches a server on the default port (it dialled 443)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 50051))
        except OSError:
            pytest.skip("port 50051 is in use on this machine")
    start_server(tiny_model_repo, "--port", "50051")
    assert ok("--target", "127.0.0.1", "health").strip() == "SERVING"
    assert "tiny-cond" in ok("models", env={"GANSERVE_TARGET": "127.0.0.1"})


def test_a_small_client_key_is_left_to_grpc(tmp_path: Path) -> None:
    """Python's OpenSSL refuses a 1024-bit key at its default security level where
    gRPC's TLS takes it: the file check must not refuse a working mutual-TLS set-up."""
    from ganserve.clients._channel import ChannelConfig

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "k.pem",
         "-out", "c.pem", "-days", "1", "-subj", "/CN=ganserve.test"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    config = ChannelConfig(
        "localhost:1", tls=True, tls_ca=tmp_path / "c.pem",
        tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem",
    )  # fmt: skip
    config.credentials()  # no ValueError


def test_sigterm_ignored_by_the_parent_stays_ignored() -> None:
    from ganserve.clients.cli import _terminate_as_exit

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with _terminate_as_exit():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
