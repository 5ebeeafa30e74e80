"""Evaluate an exported ONNX generator against real held-out images.

``n`` images are generated through ONNX Runtime (CPU) from the shared seed rule
(image i uses seed ``seed + i``) and quantized to the uint8 grid the server's
UINT8/PNG encodings deliver. Conditional models are asked for the classes in the
proportions of the training split (``prior_labels``: largest-remainder quotas, in
class order), i.e. sampled as p(y) p(x | y) of the data: the reference ``t10k`` and
the real floor have the data's class mix (MNIST: 8.6 % fives to 11.3 % ones), and a
uniform mix alone would cost FID (train 10k resampled to uniform classes vs t10k:
0.127 instead of 0.075). The evaluator classifier maps
them to 128-d features and class predictions; figures are computed against all of
``t10k``.

The real floor: the same figures for ``n`` real *training* images against the same
``t10k`` reference. That is what a generator reproducing its training distribution
perfectly would score, with the same sample size and the same reference set, so the
two columns are directly comparable (FID is biased by sample size, so e.g. 5,000 vs
5,000 halves of t10k would not be). For conditional accuracy the floor is the
evaluator's accuracy on real t10k images with their true labels.
Measured on MNIST with the committed evaluator: train 10k vs t10k FID 0.075, t10k
halves 5k vs 5k 0.081, train 5k vs the same t10k half 0.110: the evaluator having
seen the training images makes the floor slightly pessimistic (higher), by about as
much as halving the sample size would; precision/recall floors differ by < 0.03.

Two figures look beyond single samples. The perceptual path length (Karras et al.
2019, :func:`path_lengths`) is the expected squared step in evaluator feature space
between images at t and t + 1e-4 along slerp paths between random latents (and, for
conditional models, along linear blends between two classes at a fixed z), divided
by 1e-8; it runs on the generator's float32 output, since the uint8 grid would hide
a step that small. The classification accuracy score (Ravuri & Vinyals 2019,
:func:`classification_accuracy`, opt-in: minutes) trains the evaluator's network on
10,000 generated images of requested classes and tests it on real t10k, beside the
same training on 10,000 real images (the ceiling).

Heavy imports (torch, onnxruntime, onnx) happen inside functions: the CLI
registration imports this module.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ganserve.contract.labels import default_labels
from ganserve.contract.layout import MODEL_FILE, latest_version, model_folder
from ganserve.contract.model_format import Key, write_metadata
from ganserve.imaging import to_uint8
from ganserve.seeds import latents_from_seeds
from ganserve.training import metrics
from ganserve.training.report import EvalReport, ModelMetadata

__all__ = [
    "PPL_EPSILON",
    "PPL_PAIRS",
    "EvalReport",
    "EvaluationError",
    "add_arguments",
    "classification_accuracy",
    "evaluate_onnx",
    "generate",
    "path_lengths",
    "resolve_model_path",
    "run",
    "write_quality",
]

PPL_EPSILON = 1e-4  # Karras et al.'s step along the path
PPL_PAIRS = 2_000  # default path samples per figure: seconds on one core
WALK_FRAMES = 64  # frames per walk of the jump figure (walk_jump)


class EvaluationError(ValueError):
    """A model or a request that cannot be evaluated; the message says what to change."""


def resolve_model_path(path: Path | str) -> Path:
    """An ONNX file, or a model directory ``models/<name>`` (its latest version, by the
    server's version-folder rule), or a folder holding ``model.onnx``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        latest = latest_version(path)
        if latest is not None:
            return latest
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
    raise EvaluationError(f"{path}: no ONNX model (expected a .onnx file or models/<name>/)")


def prior_labels(n: int, train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``n`` labels int64 in the class proportions of ``train_labels`` (largest-remainder
    quotas, so the counts are exact up to one image), sorted by class."""
    freq = np.bincount(train_labels, minlength=num_classes) / len(train_labels)
    quota = freq * n
    counts = np.floor(quota).astype(np.int64)
    rest = n - int(counts.sum())
    counts[np.argsort(-(quota - counts), kind="stable")[:rest]] += 1
    return np.repeat(np.arange(num_classes, dtype=np.int64), counts)


def _session(onnx_path: Path, info: ModelMetadata, threads: int) -> Any:
    """A CPU ONNX Runtime session of the generator, its inputs checked."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own error types: a graph or IR version it cannot run
        raise EvaluationError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from None
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    if "z" not in inputs or (info.conditional and "y" not in inputs):
        want = "z and y" if info.conditional else "z"
        raise EvaluationError(f"{onnx_path}: inputs {sorted(inputs)}, expected {want}")
    widths = {"z": info.latent_dim, "y": info.num_classes if info.conditional else None}
    for name, want in widths.items():
        shape = inputs.get(name)
        width = shape[1] if shape and len(shape) == 2 else None
        if want is not None and isinstance(width, int) and width != want:
            raise EvaluationError(f"{onnx_path}: input {name} is {width} wide, metadata: {want}")
    outputs = [o.name for o in sess.get_outputs()]
    if "image" not in outputs:
        raise EvaluationError(f"{onnx_path}: outputs {outputs}, expected one named image")
    return sess


def _images(sess: Any, onnx_path: Path, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """The generator's float32 output ``(B, 1, 28, 28)`` for ``z`` ``(B, D)`` [and ``y``]."""
    feed = {"z": z.astype(np.float32)}
    if y is not None:
        feed["y"] = y.astype(np.float32)  # (B, num_classes): one-hot or a blend
    try:
        (img,) = sess.run(["image"], feed)
    except Exception as exc:  # ORT's own error types
        raise EvaluationError(f"{onnx_path}: ONNX Runtime failed to run it ({exc})") from None
    if img.shape[1:] != (1, 28, 28):
        raise EvaluationError(f"{onnx_path}: output shape {img.shape}, expected (N,1,28,28)")
    img = np.asarray(img, dtype=np.float32)
    bad = int(img.size - np.count_nonzero(np.isfinite(img)))
    if bad:  # scored, NaN would read as black pixels and the model as merely poor
        raise EvaluationError(
            f"{onnx_path}: {bad} of {img.size} output values are NaN or infinite "
            f"(a batch of {len(img)}): the generator is broken, nothing to score"
        )
    return img


def generate(
    onnx_path: Path,
    info: ModelMetadata,
    n: int,
    seed: int = 0,
    batch_size: int = 500,
    threads: int = 1,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images float32 ``(n, 1, 28, 28)`` on the uint8 grid in [-1, 1], and the requested
    labels int64 ``(n,)`` (None for unconditional models). A conditional model gets
    ``labels``, or ``i % num_classes`` (the server's default) when None."""
    from tqdm import tqdm

    sess = _session(onnx_path, info, threads)
    if not info.conditional:
        labels = None
    elif labels is None:
        labels = default_labels(0, n, info.num_classes)
    elif labels.shape != (n,):
        raise EvaluationError(f"labels must be ({n},), got {labels.shape}")
    out = np.empty((n, 1, 28, 28), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc=f"generate {info.name}", leave=False):
        stop = min(start + batch_size, n)
        z = latents_from_seeds(seed + start, stop - start, info.latent_dim)
        y = None if labels is None else np.eye(info.num_classes)[labels[start:stop]]
        out[start:stop] = _images(sess, onnx_path, z, y)
    # the server's uint8 rule, mapped back to [-1, 1]
    return to_uint8(out).astype(np.float32) / np.float32(127.5) - 1, labels


def path_lengths(
    onnx_path: Path,
    info: ModelMetadata,
    model: Any,
    scale: float,
    along: str = "z",
    pairs: int = PPL_PAIRS,
    seed: int = 0,
    epsilon: float = PPL_EPSILON,
    batch_size: int = 500,
    threads: int = 1,
) -> np.ndarray:
    """Perceptual path length samples float64 ``(pairs,)``: ``|f(G(p(t))) -
    f(G(p(t + epsilon)))|^2 / (scale * epsilon^2)`` with ``f`` the evaluator ``model``'s
    128-d features and ``scale`` a squared feature distance (the mean one between two
    t10k images, so 1 reads "as far apart as two random real images").

    Path ``i``, with ``t`` uniform in [0, 1 - epsilon] (the step stays on the path):
    ``along="z"``: slerp (the server's, norm interpolated linearly) from the latent of
    seed ``seed + i`` to that of seed ``seed + pairs + i``; a conditional model keeps
    one class, class ``a_i``. ``along="class"`` (conditional only): the latent of seed
    ``seed + i`` with ``y`` the linear blend from one-hot ``a_i`` to one-hot ``b_i != a_i``.
    ``t``, ``a``, ``b`` come from ``numpy.random.default_rng(seed)``: deterministic.

    Images are the generator's float32 output, not the uint8 grid of :func:`generate`:
    a step of 1e-4 moves pixels by far less than one grey level, so quantized images
    would mostly come out identical and the rest jump by a whole level."""
    import torch

    from ganserve.server.latent import lerp, slerp
    from ganserve.training.classifier import predict

    if along not in ("z", "class") or (along == "class" and not info.conditional):
        raise EvaluationError(f"path along {along!r}: expected z, or class (conditional only)")
    sess = _session(onnx_path, info, threads)
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 1.0 - epsilon, pairs)
    c = max(info.num_classes, 1)
    a = rng.integers(0, c, pairs)
    b = (a + rng.integers(1, max(c, 2), pairs)) % c  # any class but a
    eye = np.eye(c)
    z0 = latents_from_seeds(seed, pairs, info.latent_dim)  # (pairs, D)
    z1 = latents_from_seeds(seed + pairs, pairs, info.latent_dim)
    out = np.empty(pairs)
    step = max(1, batch_size // 2)  # pairs per batch: both ends of each in one run
    for start in range(0, pairs, step):
        s = slice(start, min(start + step, pairs))
        ends = (t[s], t[s] + epsilon)
        if along == "z":
            z = np.concatenate([slerp(z0[s], z1[s], e) for e in ends])  # (2B, D)
            y = np.tile(eye[a[s]], (2, 1)) if info.conditional else None
        else:
            z = np.tile(z0[s], (2, 1))
            y = np.concatenate([lerp(eye[a[s]], eye[b[s]], e) for e in ends])  # (2B, C)
        feats, _ = predict(model, torch.from_numpy(_images(sess, onnx_path, z, y)))
        k = s.stop - s.start
        out[s] = metrics.feature_step_sq(feats[:k], feats[k:], scale, epsilon)
    return out


def walk_jumps(
    onnx_path: Path,
    info: ModelMetadata,
    model: Any,
    walks: int,
    seed: int = 0,
    frames: int = WALK_FRAMES,
    threads: int = 1,
) -> np.ndarray:
    """Per z walk, its largest step's share of the walk's squared feature change
    (:func:`metrics.largest_step_share`): ``walks`` slerps of ``frames`` frames from
    the latent of seed ``seed + i`` to that of seed ``seed + walks + i``, as
    ``Interpolate`` walks; a conditional model keeps a random class per walk. float32
    images, as for the path length."""
    import torch

    from ganserve.server.latent import slerp
    from ganserve.training.classifier import predict

    sess = _session(onnx_path, info, threads)
    rng = np.random.default_rng(seed)
    c = max(info.num_classes, 1)
    a = rng.integers(0, c, walks)
    z0 = latents_from_seeds(seed, walks, info.latent_dim)  # (W, D)
    z1 = latents_from_seeds(seed + walks, walks, info.latent_dim)
    t = np.linspace(0.0, 1.0, frames)
    per_batch = max(1, 512 // frames)  # walks per generator run
    parts = []
    for start in range(0, walks, per_batch):
        s = slice(start, min(start + per_batch, walks))
        k = s.stop - s.start
        z = np.stack([slerp(z0[s], z1[s], ti) for ti in t], axis=1).reshape(k * frames, -1)
        y = np.repeat(np.eye(c)[a[s]], frames, axis=0) if info.conditional else None
        f, _ = predict(model, torch.from_numpy(_images(sess, onnx_path, z, y)))
        parts.append(np.asarray(f).reshape(k, frames, -1))
    feats = np.concatenate(parts)
    return metrics.largest_step_share(feats)


def classification_accuracy(
    onnx_path: Path,
    info: ModelMetadata,
    dataset: str,
    data_dir: Path | str,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
    threads: int = 1,
    cache: Path | str | None = None,
    images: int | None = None,
) -> tuple[float, float]:
    """CAS and its real ceiling: t10k accuracy of the evaluator's network trained (for
    ``epochs``, default ``classifier.CAS_EPOCHS``) on ``images`` (default 10,000) images of
    the conditional model (seeds ``seed`` onwards, class ``i % num_classes``: balanced),
    and the same for as many real training images (cached in ``cache``, default
    ``classifier.CAS_CACHE``)."""
    import torch

    from ganserve.training import classifier as clf
    from ganserve.training.data import load_split

    if not info.conditional:
        raise EvaluationError(f"{info.name}: CAS needs a conditional model")
    epochs = clf.CAS_EPOCHS if epochs is None else epochs
    images = clf.CAS_IMAGES if images is None else images
    if epochs < 1 or images < 1:
        raise EvaluationError(f"CAS epochs and images must be >= 1, got {epochs}, {images}")
    test_x, test_y = load_split(data_dir, "t10k")
    fake, labels = generate(onnx_path, info, images, seed, batch_size, threads)
    assert labels is not None  # conditional
    x = torch.from_numpy(fake)
    cas = clf.classification_accuracy_score(dataset, x, labels, test_x, test_y, epochs, seed)
    cache = clf.CAS_CACHE if cache is None else cache
    return cas, clf.real_cas(dataset, data_dir, images, epochs, seed, cache)


@functools.lru_cache(maxsize=4)
def _reference(dataset: str, data_dir: str) -> dict[str, Any]:
    """Evaluator features of t10k and its accuracy there; cached per process."""
    from ganserve.training.classifier import load_classifier, predict, to_input
    from ganserve.training.data import load_split

    model = load_classifier(dataset)
    images, labels = load_split(data_dir, "t10k")
    feats, preds = predict(model, to_input(images))
    return {
        "model": model,
        "feats": feats,
        "radii": metrics.kth_neighbour_radii(feats, k=3),
        "pair_sq": metrics.mean_pair_sq_distance(feats),  # the path lengths' unit
        "accuracy": metrics.accuracy(preds, labels),
    }


def _figures(
    feats: np.ndarray, preds: np.ndarray, ref: dict[str, Any], num_classes: int
) -> tuple[dict[str, float], np.ndarray]:
    precision, recall = metrics.precision_recall(ref["feats"], feats, 3, real_radii=ref["radii"])
    hist = metrics.class_histogram(preds, num_classes)
    figures = {
        "fid": metrics.fid(feats, ref["feats"]),
        "precision": precision,
        "recall": recall,
        "class_entropy": metrics.entropy_bits(hist),
        "min_class_share": metrics.min_share(hist),
    }
    return figures, hist


def evaluate_onnx(
    onnx_path: Path | str,
    data_dir: Path | str | None = None,
    dataset: str | None = None,
    n: int = 10_000,
    seed: int = 0,
    batch_size: int = 500,
    threads: int = 1,
    repeats: int = 1,
    ppl_pairs: int = PPL_PAIRS,
    cas: bool = False,
    cas_epochs: int | None = None,
    cas_cache: Path | str | None = None,
    cas_images: int | None = None,
) -> EvalReport:
    """Generate ``n`` images from ``onnx_path`` and compare them (and ``n`` real training
    images, the floor) with ``t10k`` of ``dataset`` (default: the model's own).

    Then the perceptual path lengths of ``ppl_pairs`` paths (0: none; :func:`path_lengths`)
    and, with ``cas`` on a conditional model, the classification accuracy score and its
    real ceiling (:func:`classification_accuracy`; None: the default epochs, cache, images).

    With ``repeats`` > 1 that is done for ``repeats`` disjoint seed sets (``seed + r*n``
    onwards): the report holds the mean of each figure and, in ``spread``, its sample
    standard deviation; the class histogram is summed over the sets. An unconditional
    model's FID varies between seed sets far more than a conditional one's (its class
    mix is drawn, not requested): the bundled ``mnist-dcgan`` scored 0.363 to 0.501 on
    five sets of 10,000, ``mnist-cdcgan`` 0.210 to 0.220."""
    import torch

    from ganserve.training.classifier import CAS_EPOCHS, CAS_IMAGES, predict, to_input
    from ganserve.training.data import DATASETS, default_data_dir, load_split, official_dataset

    started = time.monotonic()
    onnx_path = resolve_model_path(onnx_path)
    try:
        info = ModelMetadata.from_onnx(onnx_path)
    except Exception as exc:  # onnx raises its own DecodeError types on garbage
        raise EvaluationError(f"{onnx_path}: cannot read ONNX metadata ({exc})") from exc
    if dataset and info.dataset and dataset != info.dataset:
        raise EvaluationError(
            f"{info.name} was trained on {info.dataset}: scoring it with the {dataset} "
            f"evaluator and data measures nothing useful (leave --dataset out)"
        )
    dataset = dataset or info.dataset
    if dataset not in DATASETS:
        raise EvaluationError(f"no evaluator for dataset {dataset!r}; pass --dataset mnist|...")
    if n < 4:
        raise EvaluationError(f"n must be >= 4 (k-NN with k=3), got {n}")
    if repeats < 1:
        raise EvaluationError(f"repeats must be >= 1, got {repeats}")
    if batch_size < 1 or threads < 1:
        raise EvaluationError(f"batch_size and threads must be >= 1, got {batch_size}, {threads}")
    if ppl_pairs < 0 or (cas_epochs is not None and cas_epochs < 1):
        raise EvaluationError(f"need ppl_pairs >= 0, cas_epochs >= 1: {ppl_pairs}, {cas_epochs}")
    num_classes = len(DATASETS[dataset].class_names)
    if info.conditional and info.num_classes != num_classes:
        raise EvaluationError(f"model has {info.num_classes} classes, {dataset} {num_classes}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir(dataset)
    found = official_dataset(data_dir, "t10k")
    if found is not None and found != dataset:
        raise EvaluationError(
            f"{data_dir}: its t10k images are {found}'s, not {dataset}'s (check --data-dir)"
        )
    if found is None:
        print(
            f"warning: {data_dir}: the t10k images are not the official {dataset} files; "
            "the figures measure against them and do not compare with the model cards'",
            file=sys.stderr,
        )
    torch.set_num_threads(threads)
    ref = _reference(dataset, str(data_dir))

    train_x, train_y = load_split(data_dir, "train")
    labels = prior_labels(n, train_y, num_classes) if info.conditional else None
    runs: list[dict[str, float]] = []
    hist = np.zeros(num_classes, dtype=np.int64)
    for r in range(repeats):
        images, requested = generate(onnx_path, info, n, seed + r * n, batch_size, threads, labels)
        feats, preds = predict(ref["model"], torch.from_numpy(images))
        figures, counts = _figures(feats, preds, ref, num_classes)
        if requested is not None:
            figures["cond_accuracy"] = metrics.accuracy(preds, requested)
        runs.append(figures)
        hist += counts
    generated = {k: float(np.mean([f[k] for f in runs])) for k in runs[0]}
    spread = (
        {k: float(np.std([f[k] for f in runs], ddof=1)) for k in runs[0]} if repeats > 1 else {}
    )

    # the floor: n real training images (a seeded subset when train is larger; all of
    # them when it is smaller, e.g. n > 10,000 on the MNIST subset here)
    pick = np.random.default_rng(seed).permutation(len(train_x))[:n]
    real_feats, real_preds = predict(ref["model"], to_input(train_x[np.sort(pick)]))
    real, _ = _figures(real_feats, real_preds, ref, num_classes)
    if labels is not None:
        real["cond_accuracy"] = ref["accuracy"]
    stderr: dict[str, float] = {}
    for along in (("z", "class") if info.conditional else ("z",)) if ppl_pairs else ():
        d = path_lengths(
            onnx_path, info, ref["model"], ref["pair_sq"], along, ppl_pairs, seed,
            batch_size=batch_size, threads=threads,
        )  # fmt: skip
        generated[f"ppl_{along}"], generated[f"ppl_{along}_filtered"] = metrics.path_length_means(d)
        # one draw of ppl_pairs paths, however many --repeats: its error is the bootstrap's
        se = metrics.path_length_se(d, seed=seed)
        stderr[f"ppl_{along}"], stderr[f"ppl_{along}_filtered"] = se
    if ppl_pairs:
        walks = max(1, ppl_pairs // 10)  # 64 frames each: about a third of the PPL's images
        shares = walk_jumps(onnx_path, info, ref["model"], walks, seed, threads=threads)
        generated["walk_jump"] = float(shares.mean())
    if cas and labels is not None:
        cas_epochs = CAS_EPOCHS if cas_epochs is None else cas_epochs
        cas_images = CAS_IMAGES if cas_images is None else cas_images
        generated["cas"], real["cas"] = classification_accuracy(
            onnx_path, info, dataset, data_dir, cas_epochs, seed, batch_size, threads, cas_cache,
            cas_images,
        )  # fmt: skip
    else:
        cas_epochs = cas_images = 0
    return EvalReport(
        info=info,
        generated=generated,
        real=real,
        n=n,
        seed=seed,
        classifier_accuracy=ref["accuracy"],
        histogram=[int(c) for c in hist],
        seconds=time.monotonic() - started,
        train_images=len(train_x),
        repeats=repeats,
        spread=spread,
        stderr=stderr,
        ppl_pairs=ppl_pairs,
        cas_epochs=cas_epochs,
        cas_images=cas_images,
    )


def write_quality(onnx_path: Path | str, report: EvalReport) -> None:
    """Rewrite the ``ganserve.quality`` metadata entry of ``onnx_path``, keeping all else
    (atomically, readable by a server's user: ``contract.model_format.write_metadata``)."""
    write_metadata(onnx_path, {Key.QUALITY: json.dumps(report.quality(), sort_keys=True)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ganserve evaluate``."""
    parser.add_argument("--model", help="ONNX file or models/<name> directory to evaluate")
    parser.add_argument("--data-dir", help="IDX files with train-*/t10k-* (default: shared data)")
    parser.add_argument("--dataset", help="evaluator data set (default: the model's metadata)")
    parser.add_argument("--n", type=int, default=10_000, help="generated images (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="evaluate this many disjoint seed sets of --n images; report mean ± sd (default 1)",
    )
    parser.add_argument(
        "--ppl-pairs",
        type=int,
        default=PPL_PAIRS,
        help=f"paths per perceptual path length figure; 0: none (default {PPL_PAIRS})",
    )
    parser.add_argument(
        "--cas",
        action="store_true",
        help="conditional models: classification accuracy score, a classifier trained on "
        "10,000 generated images and tested on real t10k (minutes)",
    )
    parser.add_argument("--cas-epochs", type=int, help="epochs of the CAS classifier (default 10)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--write",
        action="store_true",
        help="store the figures in the model's ganserve.quality metadata and its model card",
    )
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite models/<name>/README.md from the stored metadata, without evaluating",
    )
    parser.add_argument(
        "--train-classifier",
        action="store_true",
        help="(re)train the evaluator classifier of --dataset instead of evaluating",
    )
    parser.add_argument(
        "--epochs", type=int, help="classifier epochs (default: 30 mnist, 4 fashion-mnist)"
    )


def _train(args: argparse.Namespace) -> int:
    from ganserve.training.classifier import train_classifier
    from ganserve.training.data import default_data_dir

    if not args.dataset:
        raise EvaluationError("--train-classifier needs --dataset (mnist or fashion-mnist)")
    data_dir = args.data_dir or default_data_dir(args.dataset)
    meta = train_classifier(args.dataset, data_dir, None, args.epochs, args.seed, args.threads)
    print(f"{args.dataset} evaluator: t10k accuracy {meta['test_accuracy']:.4f} ({meta})")
    return 0


def run(args: argparse.Namespace) -> int:
    """``ganserve evaluate``: print the table; with ``--write`` update metadata and card."""
    from ganserve.training.card import write_model_card
    from ganserve.training.data import DataError

    try:
        if args.train_classifier:
            return _train(args)
        if not args.model:
            raise EvaluationError("--model is required (an ONNX file or models/<name>)")
        onnx_path = resolve_model_path(args.model)
        if args.card_only:
            print(f"wrote {write_model_card(onnx_path.parent.parent, onnx_path, None)}")
            return 0
        report = evaluate_onnx(
            onnx_path,
            args.data_dir,
            args.dataset,
            args.n,
            args.seed,
            args.batch_size,
            args.threads,
            args.repeats,
            args.ppl_pairs,
            args.cas,
            args.cas_epochs,
        )
    except (EvaluationError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sets = f"{report.repeats} x " if report.repeats > 1 else ""
    print(
        f"{report.info.name} v{report.info.version}: {sets}{report.n} samples, "
        f"{report.seconds:.0f} s"
    )
    print(report.table())
    if args.cas and not report.info.conditional:
        print(f"no CAS: {report.info.name} is unconditional (it has no classes to ask for)")
    if args.write:
        write_quality(onnx_path, report)
        print(f"wrote ganserve.quality into {onnx_path}")
        root = model_folder(onnx_path)  # models/<name> of models/<name>/<version>/model.onnx
        if root is not None:
            print(f"wrote {write_model_card(root, onnx_path, report)}")
    return 0
