"""The invariance probe: how invariant each stage's features are to each augmentation op, and how much
of the op's parameter the features still carry (see docs/probe.md for the protocol in full).

Pairs. For op a and each held-out image x_i (i = 1..N): the clean view c_i (the image resized and
normalised as for training) and the view v_i = a(x_i; p_i) with only op a applied, p_i drawn at the
strength the manifest sets (crop scale/ratio, colour factor ranges, blur sigma range, solarize
threshold). Crop, colour jitter (all four factors, or one with the others' ranges set to 0) and blur
are always applied; flip, grayscale and solarize with probability 1/2, rotation with k ~ U{0, 1, 2, 3},
so that predicting them is a balanced problem. Each op module says how it is probed (`Op.probes`:
`hicl.augment.op.ProbeVariant`), so the ops beyond these and plugins' ops get their rows the same way.

Invariance (Mahalanobis-normalised cosine, Ericsson et al. 2021). With F the clean features of the N
images at a stage, mu their mean, S their covariance shrunk towards a scaled identity,
S' = (1 - l) S + l tr(S)/D I with l = 0.1 (the features of a stage often have more dimensions than
there are images), and W = S'^(-1/2):

    s_i = cos(W (f(c_i) - mu), W (f(v_i) - mu)),    invariance = mean_i s_i

over the pairs in which the op changed the image (all of them for continuous ops; the flipped,
rotated, grey or solarized ones otherwise), with a 95% normal-approximation interval
mean +- 1.96 sd / sqrt(n). Identical features give 1; two unrelated images give about 0 (their
centred, whitened features are uncorrelated); the figure for unrelated pairs (c_i, c_{i+1}) is
recorded as `unrelated`.

Predictability. A linear classifier (`fit_softmax`: logistic regression on standardised inputs) reads the
concatenation [f(c_i), f(v_i)] and predicts the op's parameter relative to the clean view, which is
the identity: 10 equal-count bins of the crop's area fraction, of a colour factor or of the blur
sigma, or the discrete value for flip / grayscale / solarize (2 classes) and rotation (4 classes);
plain colour jitter predicts the four factors' bins as four heads and reports their mean. Images are
split in half (seeded) into classifier training and test images; `chance` is the test accuracy of
always answering the training half's most frequent class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from hicl.augment import Params, Pipeline, identity_params
from hicl.augment.op import OPS, ProbeVariant, op_names
from hicl.manifest import AugmentConfig
from hicl.representation import effective_rank

FeatureFn = Callable[[Tensor], dict[str, Tensor]]
"""Normalised float views [B, 3, S, S] -> {stage name: pooled features [B, D]}."""

SHRINKAGE = 0.1
NUM_BINS = 10
Z95 = 1.959964
# The predictability classifier (see `fit_softmax`).
CLASSIFIER_STEPS = 300
CLASSIFIER_WD = 1e-3


def probe_ops() -> dict[str, tuple[str, ProbeVariant]]:
    """Every probe variant of every registered op, in canonical op order: variant name -> (op, variant)."""
    return {variant.name: (name, variant) for name in op_names() for variant in OPS[name].probes}


@dataclass(frozen=True)
class Cell:
    """The two figures of one (stage, op)."""

    stage: str
    op: str
    invariance: float
    invariance_ci95: float  # half-width of the 95% interval
    invariance_n: int
    unrelated: float  # the same similarity between unrelated images of the stage
    predictability: float  # test accuracy of the linear classifier
    chance: float
    predictability_n: int  # test pairs
    classes: int

    @property
    def over_chance(self) -> float:
        return self.predictability - self.chance

    def record(self) -> dict[str, float | int | str]:
        return {**asdict(self), "over_chance": self.over_chance}


@dataclass(frozen=True)
class ProbeResult:
    stages: list[str]
    ops: list[str]
    skipped: list[str]  # ops whose configured strength is 0
    num_images: int
    cells: list[Cell]
    effective_rank: dict[str, float] = field(default_factory=dict)  # per stage, of the clean images' features

    def cell(self, stage: str, op: str) -> Cell:
        return next(c for c in self.cells if c.stage == stage and c.op == op)


def whitening(features: Tensor, shrinkage: float = SHRINKAGE) -> tuple[Tensor, Tensor]:
    """(mu, W) with W = S'^(-1/2), S' = (1 - l) cov + l tr(cov)/D I (float64 eigendecomposition)."""
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    dim = x.shape[1]
    cov = centred.T @ centred / max(1, len(x) - 1)
    scale = cov.trace() / dim
    shrunk = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(dim, dtype=x.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    values = values.clamp_min(1e-12 * max(float(scale), 1e-30))
    return mu, vectors @ torch.diag(values.rsqrt()) @ vectors.T


def whitened_cosine(a: Tensor, b: Tensor, mu: Tensor, w: Tensor) -> Tensor:
    """cos(W (a - mu), W (b - mu)) per row (0 for a zero vector)."""
    return F.cosine_similarity((a.double() - mu) @ w, (b.double() - mu) @ w, dim=1, eps=1e-12).float()


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal-approximation interval."""
    n = values.numel()
    if n == 0:
        return float("nan"), float("nan")
    sd = values.double().std().item() if n > 1 else 0.0
    return values.double().mean().item(), Z95 * sd / math.sqrt(n)


def quantile_bins(values: Tensor, bins: int = NUM_BINS) -> Tensor:
    """int64 bin of every value, `bins` equal-count bins over these values."""
    edges = torch.quantile(values.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values.double(), edges, right=True)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: for the probe's small matrices a thread pool's synchronisation costs more
    than the arithmetic (measured 100x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _features_of(features: FeatureFn, views: Callable[[slice], Tensor], n: int, batch_size: int) -> dict[str, Tensor]:
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, n, batch_size):
        for stage, value in features(views(slice(start, start + batch_size))).items():
            chunks.setdefault(stage, []).append(value.detach().float().cpu())
    return {stage: torch.cat(c) for stage, c in chunks.items()}


def fit_softmax(train_x: Tensor, train_y: Tensor, classes: int, steps: int = CLASSIFIER_STEPS) -> Callable[[Tensor], Tensor]:
    """Multinomial logistic regression by full-batch gradient descent with heavy-ball momentum.

    Inputs are standardised with the training mean and sd; the loss is mean cross-entropy +
    (wd / 2) ||W||^2, its gradient X^T (softmax(XW + b) - Y) / n + wd W written out (no autograd: this
    runs for every stage x op, and tiny autograd steps cost more than their arithmetic); the step is
    1 / L with L = ||X||_2^2 / (2 n) + wd, a bound on the gradient's Lipschitz constant.
    Returns a function from inputs to predicted classes.
    """
    x = train_x.double()
    mean, sd = x.mean(0), x.std(0) + 1e-6
    x = torch.cat(((x - mean) / sd, torch.ones(len(x), 1, dtype=x.dtype)), dim=1)
    targets = F.one_hot(train_y, classes).double()
    lipschitz = torch.linalg.matrix_norm(x, ord=2).item() ** 2 / (2 * len(x)) + CLASSIFIER_WD
    w = torch.zeros(x.shape[1], classes, dtype=x.dtype)
    velocity = torch.zeros_like(w)
    decay = torch.full((x.shape[1], 1), CLASSIFIER_WD, dtype=x.dtype)
    decay[-1] = 0.0  # no weight decay on the bias
    for _ in range(steps):
        grad = x.T @ (torch.softmax(x @ w, dim=1) - targets) / len(x) + decay * w
        velocity = 0.9 * velocity - grad / lipschitz
        w = w + velocity

    def predict(test_x: Tensor) -> Tensor:
        z = torch.cat(((test_x.double() - mean) / sd, torch.ones(len(test_x), 1, dtype=torch.float64)), dim=1)
        return (z @ w).argmax(1)

    return predict


def _predictability(
    clean: Tensor, view: Tensor, labels: dict[str, Tensor], train: Tensor, test: Tensor
) -> tuple[float, float, int]:
    """(mean test accuracy over the heads, mean chance, classes of the first head)."""
    x = torch.cat((clean, view), dim=1)
    accuracy, chance = [], []
    for y in labels.values():
        classes = int(y.max()) + 1
        predict = fit_softmax(x[train], y[train], classes)
        accuracy.append((predict(x[test]) == y[test]).double().mean().item())
        majority = torch.bincount(y[train], minlength=classes).argmax()
        chance.append((y[test] == majority).double().mean().item())
    return sum(accuracy) / len(accuracy), sum(chance) / len(chance), int(next(iter(labels.values())).max()) + 1


def probe_invariance(
    features: FeatureFn,
    images: Tensor,
    augment: AugmentConfig,
    view_size: int,
    stages: Sequence[str] | None = None,
    ops: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> ProbeResult:
    """Invariance and predictability of every stage x op on uint8 `images` [N, 3, H, W].

    `features` gets normalised float views on the images' device; `stages` picks some of its outputs
    (default all); `ops` some of `probe_ops()` (default all). Everything random comes from generators seeded
    with `seed`.
    """
    # ops registered after `augment`'s class was made (another manifest's plugins) have no section in it
    table = {k: v for k, v in probe_ops().items() if v[0] in type(augment).model_fields}
    ops = list(table) if ops is None else list(ops)
    unknown = [op for op in ops if op not in table]
    if unknown:
        raise ValueError(f"unknown probe op {unknown[0]!r}; expected some of {', '.join(table)}")
    n, image_hw = len(images), (images.shape[-2], images.shape[-1])
    clean_params = identity_params(n, image_hw, images.device)
    plain = Pipeline([], augment, view_size)

    def sliced(params: Params, part: slice) -> Params:
        return {k: v[part] for k, v in params.items()}

    clean = _features_of(features, lambda part: plain.apply(images[part], sliced(clean_params, part)), n, batch_size)
    stages = list(stages or clean)
    with single_thread():
        whiten = {s: whitening(clean[s]) for s in stages}
    shifted = torch.roll(torch.arange(n), 1)
    unrelated = {s: whitened_cosine(clean[s], clean[s][shifted], *whiten[s]).mean().item() for s in stages}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[: n // 2], order[n // 2 :]

    cells, kept, skipped = [], [], []
    for index, op in enumerate(ops):
        name, variant = table[op]
        section = variant.configure(getattr(augment, name))
        if variant.strength(section) <= 0:
            skipped.append(op)
            continue
        kept.append(op)
        pipeline = Pipeline([name], augment.model_copy(update={name: section}), view_size)
        generator = torch.Generator().manual_seed(seed * 1000 + index + 1)
        params = {k: v.to(images.device) for k, v in pipeline.sample(n, image_hw, generator).items()}
        view = _features_of(features, lambda part: pipeline.apply(images[part], sliced(params, part)), n, batch_size)
        params = {k: v.cpu() for k, v in params.items()}
        raw = variant.targets(params, image_hw)
        labels = {h: quantile_bins(v) if v.is_floating_point() else v for h, v in raw.items()}
        changed = variant.changed(params) if variant.changed else torch.ones(n, dtype=torch.bool)
        for s in stages:
            with single_thread():
                cell = _cell(s, op, clean[s], view[s], whiten[s], unrelated[s], changed, labels, train, test)
            cells.append(cell)
    ranks = {s: effective_rank(clean[s]).item() for s in stages}
    return ProbeResult(stages, kept, skipped, n, cells, ranks)


def _cell(
    stage: str, op: str, clean: Tensor, view: Tensor, whiten: tuple[Tensor, Tensor], unrelated: float,
    changed: Tensor, labels: dict[str, Tensor], train: Tensor, test: Tensor,
) -> Cell:
    similarity = whitened_cosine(clean, view, *whiten)[changed]
    mean, ci = mean_ci95(similarity)
    accuracy, chance, classes = _predictability(clean, view, labels, train, test)
    return Cell(stage, op, mean, ci, int(changed.sum()), unrelated, accuracy, chance, len(test), classes)
