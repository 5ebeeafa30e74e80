"""What an evaluation says: the model's identity (from ONNX metadata), its figures next to
the real floor, the quality targets, and the markdown table shared by the CLI and the card.

Pure data and formatting (no torch, no onnxruntime); the metadata's keys and its
reader are ``ganserve.contract.model_format``'s (which imports ``onnx`` to read a file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganserve.contract.model_format import Key, ModelKind, json_field, read_metadata

__all__ = [
    "METRICS",
    "SHORT_NAMES",
    "EvalReport",
    "ModelMetadata",
    "Target",
    "targets_for",
]

# metric key -> label in tables; the order is the order of the table rows
METRICS: dict[str, str] = {
    "fid": "FID (evaluator features) ↓",
    "precision": "precision (k=3) ↑",
    "recall": "recall (k=3) ↑",
    "class_entropy": "class entropy, bits (uniform: log2 10 = 3.32)",
    "min_class_share": "smallest class share",
    "cond_accuracy": "conditional accuracy (requested label)",
    "ppl_z": "perceptual path length, z slerp: mean ↓",
    "ppl_z_filtered": "perceptual path length, z slerp: 1st–99th percentile mean ↓",
    "ppl_class": "perceptual path length, class blend: mean ↓",
    "ppl_class_filtered": "perceptual path length, class blend: 1st–99th percentile mean ↓",
    "walk_jump": "largest step of a 64-frame z walk, share of its change ↓",
    "cas": "classification accuracy score (real column: trained on real images) ↑",
}

# figures shown with 3 significant digits (the rest with 3 decimals)
_SIGNIFICANT = frozenset({"fid", "ppl_z", "ppl_z_filtered", "ppl_class", "ppl_class_filtered"})


# short names for sentences (the card's verdict line)
SHORT_NAMES: dict[str, str] = {
    "fid": "FID",
    "precision": "precision",
    "recall": "recall",
    "class_entropy": "class entropy",
    "min_class_share": "smallest class share",
    "cond_accuracy": "conditional accuracy",
    "ppl_z": "path length (z)",
    "ppl_z_filtered": "filtered path length (z)",
    "ppl_class": "path length (class blend)",
    "ppl_class_filtered": "filtered path length (class blend)",
    "walk_jump": "largest walk step",
    "cas": "classification accuracy score",
}


# the keys an exported generator must have for a report (the rest have defaults)
_REQUIRED = (Key.NAME, Key.ARCHITECTURE, Key.DATASET, Key.KIND, Key.LATENT_DIM)


@dataclass(frozen=True)
class ModelMetadata:
    """The ``ganserve.*`` metadata of one exported generator, parsed."""

    name: str
    version: str
    architecture: str
    dataset: str
    kind: ModelKind
    latent_dim: int
    num_classes: int
    class_names: list[str]
    training_config: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    created: str = ""
    quantization: dict[str, Any] = field(default_factory=dict)  # {} for a float model

    @property
    def conditional(self) -> bool:
        return self.kind == ModelKind.CONDITIONAL

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``props``; ValueError naming ``source`` and the key for what is wrong."""
        missing = [k for k in _REQUIRED if k not in props]
        if missing:
            raise ValueError(
                f"{source}: ONNX metadata lacks {', '.join(missing)}; "
                "was it exported by `ganserve export`?"
            )
        try:
            latent_dim = int(props[Key.LATENT_DIM])
            num_classes = int(props.get(Key.NUM_CLASSES, "0"))
        except ValueError as exc:
            raise ValueError(f"{source}: latent_dim/num_classes metadata is not an int") from exc
        try:
            kind = ModelKind.of(props[Key.KIND])
        except ValueError as exc:
            raise ValueError(f"{source}: metadata {Key.KIND} {exc}") from None
        try:
            quality = json_field(props, Key.QUALITY, {}, dict)
            return cls(
                name=props[Key.NAME],
                version=props.get(Key.VERSION, "1"),
                architecture=props[Key.ARCHITECTURE],
                dataset=props[Key.DATASET],
                kind=kind,
                latent_dim=latent_dim,
                num_classes=num_classes,
                class_names=list(json_field(props, Key.CLASS_NAMES, [], list)),
                training_config=dict(json_field(props, Key.TRAINING_CONFIG, {}, dict)),
                quality={k: float(v) for k, v in quality.items()},
                created=props.get(Key.CREATED, ""),
                quantization=dict(json_field(props, Key.QUANTIZATION, {}, dict)),
            )
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_onnx(cls, onnx_path: Path | str) -> ModelMetadata:
        """The metadata of the ONNX file at ``onnx_path``."""
        return cls.from_metadata(read_metadata(onnx_path), str(onnx_path))


@dataclass(frozen=True)
class Target:
    """A quality target on one metric; ``required`` ones are the project's acceptance bar,
    the others are shown as a guide only."""

    metric: str
    op: str  # ">=" | "<="
    threshold: float
    text: str
    required: bool

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


def targets_for(info: ModelMetadata, real: Mapping[str, float]) -> list[Target]:
    """The targets of the bundled models: on MNIST every model covers all classes with
    none below 5 %; DCGAN-class models reach FID <= 3x the floor, precision >= 0.7,
    recall >= 0.6; the conditional one 98 % accuracy. The MLP baseline gets the same bars
    as a guide. Fashion-MNIST conv models (clothes vary more than digits): FID <= 10x
    the floor, precision >= 0.8, recall >= 0.7 and, conditional, an accuracy within 0.02
    of the evaluator's own on real images (it is right only ~91 % of the time); other
    data sets get the MNIST bars as a guide."""
    mnist = info.dataset == "mnist"
    if info.dataset == "fashion-mnist" and info.architecture in ("dcgan", "cdcgan"):
        return _fashion_targets(info, real)
    strong = mnist and info.architecture in ("dcgan", "cdcgan")
    out = [
        Target("min_class_share", ">=", 0.05, "≥ 0.05", required=mnist),
        Target("precision", ">=", 0.70, "≥ 0.70", required=strong),
        Target("recall", ">=", 0.60, "≥ 0.60", required=strong),
    ]
    if "fid" in real:
        limit = 3 * real["fid"]
        text = f"≤ 3 × floor = {_fmt('fid', limit)}"
        out.append(Target("fid", "<=", limit, text, required=strong))
    if info.conditional and mnist:  # elsewhere the evaluator itself may be below 98 %
        out.append(Target("cond_accuracy", ">=", 0.98, "≥ 0.98", required=True))
    return out


def _fashion_targets(info: ModelMetadata, real: Mapping[str, float]) -> list[Target]:
    out = [
        Target("min_class_share", ">=", 0.05, "≥ 0.05", required=True),
        Target("precision", ">=", 0.80, "≥ 0.80", required=True),
        Target("recall", ">=", 0.70, "≥ 0.70", required=True),
    ]
    if "fid" in real:
        limit = 10 * real["fid"]
        out.append(Target("fid", "<=", limit, f"≤ 10 × floor = {_fmt('fid', limit)}", True))
    if info.conditional and "cond_accuracy" in real:
        bar = real["cond_accuracy"] - 0.02
        text = f"≥ evaluator's − 0.02 = {_fmt('cond_accuracy', bar)}"
        out.append(Target("cond_accuracy", ">=", bar, text, required=True))
    return out


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key in _SIGNIFICANT:  # 3 significant digits, trailing zeros kept: 3.00, 0.0753, 12.4
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}".rstrip(".")
    return f"{value:.3f}"


@dataclass
class EvalReport:
    """Figures of ``n`` generated images and of ``n`` real images, both against t10k."""

    info: ModelMetadata
    generated: dict[str, float]
    real: dict[str, float]
    n: int
    seed: int = 0
    classifier_accuracy: float = float("nan")
    histogram: list[int] = field(default_factory=list)  # predicted classes of the samples
    seconds: float = 0.0
    train_images: int = 0  # size of the data set's train split (0: unknown)
    # ``repeats`` disjoint seed sets of ``n`` images each: ``generated`` holds the means
    # over the sets and ``spread`` their sample standard deviations (empty for 1 set)
    repeats: int = 1
    spread: dict[str, float] = field(default_factory=dict)
    # standard errors of the figures measured once (the path lengths, by bootstrap over
    # their paths), shown "± x (SE)" where ``spread`` has none
    stderr: dict[str, float] = field(default_factory=dict)
    ppl_pairs: int = 0  # paths per perceptual path length figure (0: not measured)
    cas_epochs: int = 0  # epochs of the CAS classifiers (0: no CAS)
    cas_images: int = 0  # images each CAS classifier was trained on

    @property
    def last_seed(self) -> int:
        return self.seed + self.repeats * self.n - 1

    def targets(self) -> list[Target]:
        return targets_for(self.info, self.real)

    def targets_met(self, required_only: bool = True) -> dict[str, bool]:
        return {
            t.metric: t.met(self.generated[t.metric])
            for t in self.targets()
            if t.metric in self.generated and (t.required or not required_only)
        }

    def table(self) -> str:
        """Markdown: metric | model | real floor | target."""
        targets = {t.metric: t for t in self.targets()}
        lines = ["| metric | model | real floor | target |", "|---|---:|---:|---|"]
        for key, label in METRICS.items():
            if key not in self.generated:
                continue
            target = targets.get(key)
            if target is None:
                cell = "—"
            else:
                verdict = "met" if target.met(self.generated[key]) else "NOT met"
                cell = f"{target.text}: {verdict}" if target.required else f"({target.text}, guide)"
            gen, real = self.generated.get(key), self.real.get(key)
            shown = _fmt(key, gen)
            if key in self.spread:
                shown += f" ± {_fmt(key, self.spread[key])}"
            elif key in self.stderr:
                shown += f" ± {_fmt(key, self.stderr[key])} (SE)"
            lines.append(f"| {label} | {shown} | {_fmt(key, real)} | {cell} |")
        return "\n".join(lines)

    def quality(self) -> dict[str, float]:
        """Flat figures for the ``ganserve.quality`` metadata entry."""
        out: dict[str, float] = {}
        for key in METRICS:
            if key in self.generated:
                out[key] = round(float(self.generated[key]), 6)
            if key in self.real:
                out[f"{key}_real"] = round(float(self.real[key]), 6)
            if key in self.spread:
                out[f"{key}_sd"] = round(float(self.spread[key]), 6)
            if key in self.stderr:
                out[f"{key}_se"] = round(float(self.stderr[key]), 6)
        out["classifier_accuracy"] = round(float(self.classifier_accuracy), 6)
        out["n"] = float(self.n)
        out["seed"] = float(self.seed)
        if self.repeats > 1:
            out["repeats"] = float(self.repeats)
        if self.train_images:
            out["train_images"] = float(self.train_images)
        for key in ("ppl_pairs", "cas_epochs", "cas_images"):
            if getattr(self, key):
                out[key] = float(getattr(self, key))
        return out

    @classmethod
    def from_quality(
        cls, info: ModelMetadata, quality: Mapping[str, float] | None = None
    ) -> EvalReport:
        """Rebuild a report from a ``ganserve.quality`` entry (defaults to the model's own)."""
        q = dict(info.quality if quality is None else quality)
        generated = {k: float(q[k]) for k in METRICS if k in q}
        real = {k: float(q[f"{k}_real"]) for k in METRICS if f"{k}_real" in q}
        spread = {k: float(q[f"{k}_sd"]) for k in METRICS if f"{k}_sd" in q}
        stderr = {k: float(q[f"{k}_se"]) for k in METRICS if f"{k}_se" in q}
        return cls(
            info=info,
            generated=generated,
            real=real,
            n=int(q.get("n", 0)),
            seed=int(q.get("seed", 0)),
            classifier_accuracy=float(q.get("classifier_accuracy", float("nan"))),
            train_images=int(q.get("train_images", 0)),
            repeats=int(q.get("repeats", 1)),
            spread=spread,
            stderr=stderr,
            ppl_pairs=int(q.get("ppl_pairs", 0)),
            cas_epochs=int(q.get("cas_epochs", 0)),
            cas_images=int(q.get("cas_images", 0)),
        )
