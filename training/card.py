"""The model card ``models/<name>/README.md``, written from the ONNX file alone.

Everything on the card comes from the file's ``ganserve.*`` metadata (the export
convention), so a card can be regenerated from the model without its training run;
a fresh :class:`EvalReport` replaces the stored ``ganserve.quality`` figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ganserve.training.report import SHORT_NAMES, EvalReport, ModelMetadata

__all__ = ["render_model_card", "write_model_card"]

_ARCHITECTURES = {
    "mlp": "fully connected GAN (G 100→256→512→1024→784, LeakyReLU 0.2, tanh output; "
    "D 784→1024→512→256→1 with dropout 0.3)",
    "dcgan": "DCGAN (strided transposed convolutions, batch norm, ReLU/tanh in G, LeakyReLU in D)",
    "cdcgan": "class-conditional DCGAN (the class enters G and D; served as a float one-hot "
    "`y`, so blends between classes are possible)",
}

# training_config keys worth a line of their own, in this order; the rest go to a JSON block
_TRAIN_KEYS = (
    ("epochs_done", "epochs"),
    ("batch_size", "batch size"),
    ("loss", "loss"),
    ("real_label", "real label (< 1: one-sided smoothing)"),
    ("lr", "learning rate"),
    ("lr_decay_start", "learning rate falls linearly to 0 from epoch"),
    ("r1_gamma", "R1 penalty gamma"),
    ("topk_gamma", "top-k G steps: share of G's images it learns from, per-epoch factor"),
    ("topk_min", "top-k G steps: smallest share"),
    ("codes", "InfoGAN categorical code values (chosen by z; no labels used)"),
    ("code_temperature", "soft code temperature (softmax of the code's projections of z)"),
    ("ema", "exported weights are an EMA of G's"),
    ("ema_decay", "EMA decay"),
    ("seed", "seed"),
)
_OPTIONAL_KEYS = frozenset(
    {"lr_decay_start", "r1_gamma", "codes", "code_temperature"}
)  # a line only when in use


def _in_use(cfg: dict[str, Any], key: str) -> bool:
    """Whether ``key`` of a training config earns a line in the card."""
    if key in ("topk_gamma", "topk_min"):  # top-k is off while its factor is 1
        return cfg.get("topk_gamma", 1.0) != 1.0
    return bool(cfg[key]) or key not in _OPTIONAL_KEYS


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "not recorded"
    return f"{s / 60:.1f} min ({s:.0f} s)" if s >= 60 else f"{s:.0f} s"


def _value(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


def _evaluation(report: EvalReport | None) -> list[str]:
    if report is None or not report.generated:
        return ["Not evaluated yet: run `ganserve evaluate --model <path> --write`.", ""]
    met = report.targets_met()
    if met:
        missed = [SHORT_NAMES[k] for k, ok in met.items() if not ok]
        verdict = (
            "All quality targets are met."
            if not missed
            else f"Quality targets NOT met: {', '.join(missed)}."
        )
    else:
        verdict = "No quality target is required of this model (a baseline / guide figures only)."
    acc = report.classifier_accuracy
    return [
        (
            f"{report.repeats} disjoint sets of {report.n:,} images (seeds "
            f"{report.seed}..{report.last_seed}; figures: mean ± standard deviation over "
            "the sets"
            + (
                "; the path lengths, measured once on their own paths, ± their bootstrap "
                "standard error, marked SE)"
                if report.stderr
                else ")"
            )
            if report.repeats > 1
            else f"{report.n:,} images from seeds {report.seed}..{report.last_seed}"
        )
        + (
            " with labels in the class proportions of the training split"
            if report.info.conditional
            else ""
        )
        + ", compared with all real t10k test images in the feature space of the project's "
        f"own {report.info.dataset} classifier"
        + (f" (t10k accuracy {acc:.2%})." if acc == acc else "."),  # nan: not recorded
        "",
        report.table(),
        "",
        verdict,
        "",
        "- *real floor*: the same figures for "
        + (
            f"all {report.train_images:,} real training images (fewer than the "
            f"{report.n:,} generated per set) "
            if 0 < report.train_images < report.n
            else "the same number of real training images "
        )
        + "against the same t10k reference: what a generator reproducing its training data "
        "exactly would score. For conditional accuracy the floor is the classifier's "
        "accuracy on real t10k images.",
        "- FID: Fréchet distance of Gaussians fitted to the 128-d penultimate features "
        "(not Inception features: values are not comparable with published FIDs). Two real "
        "samples of this size agree closely in this space, so the floor is small and the "
        "ratio model / floor is the figure to read.",
        "- precision / recall: Kynkäänniemi et al. 2019, k = 3 nearest-neighbour balls.",
        "- class figures: classes as predicted by the classifier; entropy in bits.",
        *_path_and_cas_notes(report),
        "",
    ]


def _path_and_cas_notes(report: EvalReport) -> list[str]:
    """Bullets for the figures beyond single samples, when the report has them."""
    lines = []
    cond = report.info.conditional
    if "ppl_z" in report.generated:
        lines.append(
            "- perceptual path length (Karras et al. 2019): the squared step in the "
            "classifier's feature space between the float32 images at t and t + 10⁻⁴ of a "
            f"path, over 10⁻⁸, averaged over {report.ppl_pairs:,} paths with t uniform; unit: "
            "the mean squared feature distance between two random t10k images. z paths: "
            "slerp between the latents of two seeds"
            + (
                " at one class; class-blend paths: one latent, `y` blended linearly "
                "between two one-hot classes"
                if cond
                else ""
            )
            + ". Lower is smoother. The filtered mean keeps the samples within the 1st–99th "
            "percentile (as StyleGAN reports it): a rare jump (a discrete code switching, a "
            "quantization step) raises the mean only."
            + (
                " This int8 model's hidden activations move by whole levels of their 8-bit "
                "grid or not at all, and a step of 10⁻⁴ moves some of them almost every "
                "time: both means measure that grid, not smoothness."
                if report.info.quantization
                else ""
            )
        )
    if "walk_jump" in report.generated:
        lines.append(
            "- largest walk step: over z walks of 64 frames (slerp between the latents of "
            "two seeds, as `Interpolate` walks), the largest squared feature step between "
            "consecutive frames as a share of the walk's summed squared steps, averaged over "
            "the walks. An even morph scores about 1/63 = 0.016; a walk that switches digit "
            "within a frame scores near 1. The path length's single infinitesimal step per "
            "path almost never lands on such a switch; this figure sees every one."
        )
    if "cas" in report.generated:
        lines.append(
            "- classification accuracy score (Ravuri & Vinyals 2019): t10k accuracy of the "
            f"classifier's network trained for {report.cas_epochs} epochs on "
            f"{report.cas_images:,} generated images only (classes balanced); its real column "
            "is the same training on as many real training images. Below the real one: "
            "classes drawn poorly or with too little variety."
        )
    return lines


def _quantization(recipe: dict[str, Any]) -> list[str]:
    if not recipe:
        return []
    levels = recipe.get("grey_levels", {})
    return [
        "## Quantization",
        "",
        f"An int8 copy of `{recipe.get('source', '?')}` made by `ganserve quantize` "
        "(ONNX Runtime's static quantizer, QDQ format): the hidden convolutions run on "
        "8-bit integers, everything else (the image layer included) in float; the "
        "training below is the source's.",
        "",
        f"- layers: {', '.join(recipe.get('op_types', []))}, except the image layer(s) "
        f"{', '.join(recipe.get('float_layers', [])) or '—'}; weights "
        f"{recipe.get('weights', '?')}; activations {recipe.get('activations', '?')}",
        f"- calibration: {recipe.get('calibration_images', '?')} generated inputs from seed "
        f"{recipe.get('calibration_seed', '?')}",
        f"- difference from the float model on {recipe.get('check_images', '?')} held-out "
        f"inputs (images in [-1, 1]): mean {recipe.get('mean_abs_difference', '?')}, p99 "
        f"{recipe.get('p99_abs_difference', '?')}, max {recipe.get('max_abs_difference', '?')}; "
        f"distinct 8-bit grey levels {levels.get('int8', '?')} (float: {levels.get('float', '?')})",
        f"- ONNX Runtime {recipe.get('onnxruntime', '?')}",
        "",
    ]


def render_model_card(onnx_path: Path, report: EvalReport | None = None) -> str:
    """The card's markdown for the model at ``onnx_path``."""
    info = ModelMetadata.from_onnx(onnx_path)
    if report is None and info.quality:
        report = EvalReport.from_quality(info)
    cfg = info.training_config
    arch = _ARCHITECTURES.get(info.architecture, info.architecture)
    classes = ", ".join(info.class_names) if info.class_names else "—"
    size_mb = onnx_path.stat().st_size / 1e6
    lines = [
        f"# {info.name} (version {info.version})",
        "",
        f"{'An' if info.kind[:1] in 'aeiou' else 'A'} {info.kind} GAN generator trained on "
        f"**{info.dataset}**, exported to ONNX.",
        "",
        "![samples](samples.png)",
        "",
        "## Model",
        "",
        f"- architecture: `{info.architecture}`: {arch}",
        f"- latent size: {info.latent_dim} (input `z` float32 `(N, {info.latent_dim})`)",
        (
            f"- classes ({info.num_classes}, input `y` float32 `(N, {info.num_classes})`): "
            f"{classes}"
            if info.conditional
            else f"- classes of the data set: {classes} (unconditional: no class input)"
        ),
        "- output: `image` float32 `(N, 1, 28, 28)` in [-1, 1]",
        f"- file: `{onnx_path.parent.name}/{onnx_path.name}`, {size_mb:.1f} MB, "
        f"created {info.created or 'unknown'}",
        "",
        *_quantization(info.quantization),
        "## Training",
        "",
        f"- data: {info.dataset} `train-*` split only (`t10k` is kept for evaluation)",
        f"- training time: {_duration(cfg.get('train_seconds'))} on this project's 2-core CPU",
    ]
    train_images = cfg.get("train_images") or (report.train_images if report else 0)
    if train_images:
        lines[-2] += f", {int(train_images):,} images"
    lines += [
        f"- {label}: {_value(cfg[key])}"
        for key, label in _TRAIN_KEYS
        if key in cfg and _in_use(cfg, key)
    ]
    lines += [
        "",
        "<details><summary>full training configuration</summary>",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
        "## Evaluation",
        "",
        *_evaluation(report),
        "## Serving",
        "",
        "`make run` serves every model under `models/` over gRPC (`ganserve.v1.Generator`, "
        "port 50051). From Python, with the generated stubs:",
        "",
        "```python",
        "import grpc",
        "from ganserve.v1 import generator_pb2 as pb, generator_pb2_grpc as rpc",
        "",
        'stub = rpc.GeneratorStub(grpc.insecure_channel("localhost:50051"))',
        f'resp = stub.Sample(pb.SampleRequest(model="{info.name}", seed=0, count=16,'
        + (" labels=[3]," if info.conditional else "")
        + " encoding=pb.ENCODING_PNG))",
        "```",
        "",
        "Image i of a request uses seed `seed + i` (see `protos/ganserve/v1/generator.proto`), "
        + (
            "so the evaluation above is reproducible through the server when the labels are "
            "passed as it asked for them: the classes in the training set's proportions, "
            "sorted (`prior_labels` in `training/evaluate.py`), not the server's default "
            "`i % 10`."
            if info.conditional
            else "so the evaluation above is reproducible through the server."
        ),
        "",
    ]
    return "\n".join(lines)


def write_model_card(model_root: Path, onnx_path: Path, report: EvalReport | None = None) -> Path:
    """Write ``model_root/README.md`` for the model at ``onnx_path``; returns its path."""
    model_root, onnx_path = Path(model_root), Path(onnx_path)
    model_root.mkdir(parents=True, exist_ok=True)
    out = model_root / "README.md"
    out.write_text(render_model_card(onnx_path, report), encoding="utf-8")
    return out
