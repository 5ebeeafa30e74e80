"""ganserve benchmark: a closed-loop concurrency sweep against the real server over loopback.

Measured in one run, so that their ratios hold on a noisy shared machine:
  raw-ort    the model in ONNX Runtime in-process, one caller, the server's session options
             and graph (the compute limit); raw-ort-dflt: the file as it is, ORT's default options
  bare-grpc  a grpc.aio server answering Sample with a pre-built response (transport limit)
  naive      a grpc.aio server running the model per request on its event loop, ORT's
             default options (what a user writes in an afternoon; --no-naive skips it)
  batched    ``ganserve serve`` with dynamic batching on
  unbatched  the same server with ``--no-batching``
The servers run side by side (idle ones cost nothing) and the repeats interleave
them, so background load drifts onto all of them alike. Figures are printed, never asserted.

    python benchmarks/bench.py --model-dir models --model mnist-dcgan [--device cpu]
        [--duration 5] [--warmup 1] [--repeats 2] [--concurrency 1,4,16,64] [--quick]
        [--no-naive] [--json out.json] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from _loadgen import PointResult, check_target, make_request, merge, run_point
from _procs import ServerProcess, make_workdir, real_server_cmd, scrape_metric_sums
from _raw_ort import RawResult, measure_raw_ort, resolve_model, write_standin
from _report import context_lines, format_table, machine_info, ratios, row_dict

from ganserve.server.errors import ServeError

_METRICS = [
    f"ganserve_{m}_{s}"
    for m in ("batch_size_images", "inference_seconds")
    for s in ("sum", "count")
]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-dcgan")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--repeats", type=int, default=2, help="measurements of each point")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 64], help="count=1 sweep")
    p.add_argument("--large-count", type=int, default=64, help="images per large request")
    p.add_argument("--large-concurrency", type=_ints, default=[1, 4], help="its sweep")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels the clients share")
    p.add_argument(
        "--standin",
        choices=("auto", "dcgan", "dcgan-ref", "tiny"),
        default="auto",
        help="auto: a random DCGAN of the bundled one's size only if the model is missing; "
        "dcgan (that), dcgan-ref (the targets' reference size, no extra 3x3 blocks) or tiny: "
        "always use that stand-in",
    )
    p.add_argument("--intra-op-threads", type=int, help="ORT threads (server and raw-ort)")
    p.add_argument(
        "--model-instances",
        type=int,
        default=1,
        help="the servers' --model-instances; raw-ort then runs as many callers side by side",
    )
    p.add_argument("--inter-op-threads", type=int)
    p.add_argument("--allow-spinning", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--rewrite-conv-transpose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the server's load-time ConvTranspose rewrite (default: the server's, on)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for ganserve serve, e.g. --server-arg=--max-queue-delay-ms=1",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for every server process (bare one included)",
    )
    p.add_argument(
        "--naive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the naive per-request server (benchmarks/_naive_server.py)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 0.3 s points, c=1,4")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--profile", type=Path, help="then py-spy the batched server into DIR")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument(
        "--profile-point",
        type=_ints,
        default=None,
        metavar="COUNT,C",
        help="load during the profile (default: count=1 at the top --concurrency)",
    )
    p.add_argument("--profile-only", action="store_true", help="skip the sweep (needs --profile)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, stand-in)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeats = 0.3, 0.1, 1
        args.concurrency, args.large_concurrency = [1, 4], [1]
    if args.profile_point is None:
        args.profile_point = [1, max(args.concurrency)]
    if len(args.profile_point) != 2:
        p.error("--profile-point takes COUNT,C")
    if args.profile_only and not args.profile:
        p.error("--profile-only needs --profile DIR")
    if any("=" not in item for item in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    if args.duration <= 0 or args.warmup < 0 or args.repeats < 1 or args.channels < 1:
        p.error("--duration must be > 0, --warmup >= 0, --repeats and --channels >= 1")
    return args


def prepare_repo(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, str]:
    """A repository holding only the benchmarked model (a link to it, or a stand-in)."""
    repo = workdir / "models"
    repo.mkdir()
    found = resolve_model(args.model_dir, args.model)
    if found is not None and args.standin == "auto":
        (repo / args.model).symlink_to((args.model_dir / args.model).resolve())
        return repo, found, str(found)
    kind = "dcgan" if args.standin == "auto" else args.standin
    path = write_standin(repo, args.model, kind)
    why = "not found" if found is None else "ignored (--standin)"
    return repo, path, f"STAND-IN {kind} (random weights; {args.model_dir}/{args.model} {why})"


def runtime_kwargs(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The ORT settings shared by the raw reference and the servers, as kwargs and flags."""
    kwargs: dict = {"device": args.device}
    flags = ["--device", args.device]
    for name in ("intra_op_threads", "inter_op_threads"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
            flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.allow_spinning is not None:
        kwargs["allow_spinning"] = args.allow_spinning
        flags.append("--allow-spinning" if args.allow_spinning else "--no-allow-spinning")
    if args.rewrite_conv_transpose is not None:
        kwargs["rewrite_conv_transpose"] = args.rewrite_conv_transpose
        flags.append(("--" if args.rewrite_conv_transpose else "--no-") + "rewrite-conv-transpose")
    if args.model_instances != 1:
        flags += ["--model-instances", str(args.model_instances)]
    return kwargs, flags


def _metric_extra(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    if d.get("ganserve_batch_size_images_count", 0) <= 0:
        return {}
    return {
        "mean_batch": d["ganserve_batch_size_images_sum"] / d["ganserve_batch_size_images_count"],
        "mean_infer_ms": 1e3
        * d["ganserve_inference_seconds_sum"]
        / max(d["ganserve_inference_seconds_count"], 1),
    }


async def measure(
    args: argparse.Namespace,
    servers: dict[str, ServerProcess],
    payloads: dict[int, bytes],
    points: list[tuple[int, int]],
    model_path: Path,
    kwargs: dict,
) -> tuple[dict, dict[tuple[str, int], RawResult]]:
    """Every repeat: each point on each server in turn, the raw references at batch n
    measured just before the first point of count n (background load drifts)."""
    runs: dict[tuple[str, int, int], list[PointResult]] = defaultdict(list)
    raw_runs: dict[tuple[str, int], list[RawResult]] = defaultdict(list)
    for name, server in servers.items():
        for count, payload in payloads.items():
            try:
                await check_target(server.target, payload, count)
            except RuntimeError as exc:
                raise RuntimeError(f"{name} server: {exc}; its log: {server.log_path}") from None
    for rep in range(args.repeats):
        for i, (count, conc) in enumerate(points):
            if count not in [c for c, _ in points[:i]]:
                for label, defaults in (("raw-ort", False), ("raw-ort-dflt", True)):
                    r, _ = measure_raw_ort(
                        model_path,
                        count,
                        args.duration,
                        args.warmup,
                        kwargs,
                        defaults,
                        callers=args.model_instances,
                    )
                    raw_runs[(label, count)].append(r)
            for name, server in servers.items():
                before = scrape_metric_sums(server.metrics_port, _METRICS)
                point = await run_point(
                    server.target,
                    payloads[count],
                    count,
                    conc,
                    args.warmup,
                    args.duration,
                    server.pid,
                    args.channels,
                )
                after = scrape_metric_sums(server.metrics_port, _METRICS)
                point.extra = _metric_extra(before, after)
                runs[(name, count, conc)].append(point)
                print(
                    f"  [{rep + 1}/{args.repeats}] {name:<10} count={count:<3} c={conc:<3} "
                    f"{point.requests_per_s:8.0f} req/s  p99 {point.percentile_ms(99):7.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    raw = {key: RawResult.pool(rs) for key, rs in raw_runs.items()}
    order = [(n, c, k) for c, k in points for n in servers]
    return {key: merge(runs[key]) for key in order}, raw


def start_servers(
    args: argparse.Namespace,
    repo: Path,
    flags: list[str],
    workdir: Path,
    model_path: Path,
    device: str,
) -> dict[str, ServerProcess]:
    """Bare, naive, batched and unbatched servers (only batched for --profile-only), all
    ready. The naive one gets the model file and the device the probe ran on."""
    servers: dict[str, ServerProcess] = {}
    env = dict(item.partition("=")[::2] for item in args.server_env)
    if not args.profile_only:
        servers["bare-grpc"] = ServerProcess.launch_bare(workdir, env)
        if args.naive:
            servers["naive"] = ServerProcess.launch_naive(workdir, model_path, device, env)
    for name, batching in (("batched", True), ("unbatched", False)):
        if batching or not args.profile_only:
            cmd = real_server_cmd(repo, batching, [*flags, *args.server_arg])
            servers[name] = ServerProcess.launch(name, cmd, workdir, env)
    # Launched together so that their imports and warm-ups overlap; now wait for each.
    for server in servers.values():
        server.wait_ready()
    return servers


def report(args: argparse.Namespace, results: dict, raw: dict, machine: dict, note: str) -> None:
    """Print the table and the targets; write them to --json if asked."""
    big_c = 4 if 4 in args.large_concurrency else max(args.large_concurrency)
    top_c, low_c = max(args.concurrency), min(args.concurrency)
    device = str(machine["device"])
    targets = ratios(results, raw, args.large_count, big_c, top_c, low_c, device)
    print(
        f"\n{args.repeats} x {args.duration:g} s per point after {args.warmup:g} s warm-up; "
        "cpu columns in cores (1.00 = one core), 'other' = rest of the machine"
    )
    print(format_table(results, raw))
    print("\ntargets:")
    for ratio in targets:
        print("  " + ratio.line())
    print("context (same run):")
    for line in context_lines(results, raw, top_c, low_c, args.large_count, big_c):
        print("  " + line)
    if args.json:
        doc = {
            "machine": machine,
            "model": note,
            "args": {k: str(v) for k, v in vars(args).items()},
            "raw_ort": [
                {"target": n, "batch": b, "img_per_s": r.images_per_s, "cores": r.cores}
                for (n, b), r in raw.items()
            ],
            "points": [row_dict(n, p) | {"concurrency": c} for (n, _, c), p in results.items()],
            "targets": [vars(r) | {"verdict": r.verdict} for r in targets],
        }
        args.json.write_text(json.dumps(doc, indent=2))


def served_plan(target: str, model: str) -> dict:
    """The session plan the batched server measured at load (``GetModel``), printed and
    returned as runtime pins, so that the raw-ort reference runs the same graph on the
    same thread count per batch size."""
    from ganserve.clients.sync import GanClient
    from ganserve.server.tuning import Cost, RuntimePlan

    with GanClient(target) as client:
        served = client.get_model(model).runtime
    if served is None or served.graph == "":
        return {}
    plan = RuntimePlan(served.graph, served.single_thread_max_batch, served.source,
                       served.threads, tuple(Cost(*c) for c in served.costs))  # fmt: skip
    costs = ", ".join(f"{n}: {s * 1e3:.2f}" for n, s in plan.chosen_costs().items())
    print(f"server plan: {plan.graph} graph, batches <= {plan.single_thread_max} on one "
          f"thread ({plan.source}); ms per batch {costs}", flush=True)  # fmt: skip
    return {
        "rewrite_conv_transpose": plan.graph == "rewritten",
        "small_batch_max": plan.single_thread_max,
        "tuning": "off",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = make_workdir()
    servers: dict[str, ServerProcess] = {}
    try:
        repo, model_path, note = prepare_repo(args, workdir)
        kwargs, flags = runtime_kwargs(args)
        # Probe the device first: --device cuda without a GPU fails here, before any server.
        _, device = measure_raw_ort(model_path, 1, 0.01, 0.0, kwargs)
        servers = start_servers(args, repo, flags, workdir, model_path, device)
        kwargs = kwargs | served_plan(servers["batched"].target, args.model)
        machine = machine_info(device)
        print(f"model: {note}", flush=True)
        print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
        payloads = {n: make_request(args.model, n) for n in {1, args.large_count}}
        if not args.profile_only:
            points = [(1, c) for c in args.concurrency]
            points += [(args.large_count, c) for c in args.large_concurrency]
            results, raw = asyncio.run(measure(args, servers, payloads, points, model_path, kwargs))
            report(args, results, raw, machine, note)
        if args.profile:
            from _profile import profile_server

            count, conc = args.profile_point
            payload = make_request(args.model, count)
            summary = profile_server(
                servers["batched"], payload, count, conc, args.profile_seconds, args.profile
            )
            print(summary)
        return 0
    except (RuntimeError, ServeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        args.keep = args.keep or bool(servers)  # the servers' logs say more
        return 1
    finally:
        for server in servers.values():
            code = server.stop()
            if code != 0:
                print(
                    f"bench: {server.name} server exited with {code}; log: {server.log_path}",
                    file=sys.stderr,
                )
                args.keep = True
        if args.keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
