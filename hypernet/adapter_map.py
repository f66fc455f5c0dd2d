"""A picture of the adapter space: generated adapters projected to two dimensions.

Each adapter is the vector of its weight updates, delta-W = scale * B @ A of every target,
flattened and concatenated: what the adapter does to the model, free of the A/B factor
ambiguity (B @ A = (B M)(M^-1 A)). The map is the PCA of those vectors; the number that goes
with it is the mean cosine similarity of adapters of the same task (paraphrases) vs of
different tasks. A generator that reads what an instruction asks puts paraphrases together.

A delta-W vector is long (sum of out * in over targets: 0.66 M floats for the shipped tiny
checkpoint, 40 M for t5-base's q, k, v, o, wi, wo), so we never build it: both the PCA and the
cosines need only inner products, and <B_i A_i, B_j A_j>_F = sum((B_i^T B_j) * (A_i A_j^T)) costs
r x r per pair. PCA from the centred Gram matrix (kernel PCA with a linear kernel) is the same
projection as PCA of the vectors.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hypernet.batching import stack_adapters
from hypernet.errors import UserError
from hypernet.export import Entry
from hypernet.files import atomic_write_bytes, write_json
from hypernet.model import Adapter, TagiModel
from hypernet.targets import LoraWeights

_ROW_BLOCK = 64  # rows of the Gram matrix per step: bounds the (block, n, r, r) temporaries


def delta_gram(weights: LoraWeights) -> torch.Tensor:
    """(n, n) float64 Frobenius inner products of the n adapters' flattened delta-W (all targets)."""
    n = weights.batch_size
    gram = torch.zeros(n, n, dtype=torch.float64)
    for group, lora_A in weights.lora_A.items():
        lora_A = lora_A.double().cpu()  # (targets, n, r, in)
        lora_B = weights.lora_B[group].double().cpu()  # (targets, n, out, r)
        for A, B in zip(lora_A, lora_B):  # one target: A (n, r, in), B (n, out, r)
            for start in range(0, n, _ROW_BLOCK):
                rows = slice(start, start + _ROW_BLOCK)
                BtB = torch.einsum("ior,jos->ijrs", B[rows], B)
                AAt = torch.einsum("ird,jsd->ijrs", A[rows], A)
                gram[rows] += (BtB * AAt).sum(dim=(2, 3))
    return gram * weights.scale**2


def pca_from_gram(gram: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, list[float]]:
    """Coordinates (n, k) on the top principal components, and each one's share of the variance.
    Signs are fixed (largest coordinate positive) so that reruns draw the same picture."""
    n = gram.shape[0]
    centre = torch.eye(n, dtype=gram.dtype) - 1.0 / n
    centred = centre @ gram @ centre
    values, vectors = torch.linalg.eigh(centred)  # ascending
    values, vectors = values.flip(0)[:k].clamp(min=0), vectors.flip(1)[:, :k]
    coords = vectors * values.sqrt()
    signs = torch.sign(coords.gather(0, coords.abs().argmax(dim=0, keepdim=True)))
    total = float(centred.trace())
    return coords * torch.where(signs == 0, 1.0, signs), [float(v) / total if total > 0 else 0.0 for v in values]


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp(min=1e-300).sqrt()
    return gram / norms[:, None] / norms[None, :]


@dataclass(frozen=True)
class TaskSimilarity:
    """Mean pairwise cosine similarity of adapters whose labels match vs differ."""

    same_task: float | None
    different_task: float | None
    same_pairs: int
    different_pairs: int


def task_similarity(
    cosine: torch.Tensor, labels: list[str | None], keep: Callable[[int, int], bool] = lambda i, j: True
) -> TaskSimilarity:
    """Over pairs i < j where both have a label (and `keep(i, j)`); None when there is no such pair."""
    same: list[float] = []
    different: list[float] = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] is not None and labels[j] is not None and keep(i, j):
                (same if labels[i] == labels[j] else different).append(float(cosine[i, j]))
    return TaskSimilarity(
        statistics.fmean(same) if same else None, statistics.fmean(different) if different else None, len(same), len(different)
    )


def similarity_by_split(cosine: torch.Tensor, entries: list[Entry]) -> dict[str, TaskSimilarity]:
    """task_similarity over the pairs of each (split, split) combination, keyed "a+b" (sorted): e.g.
    whether a held-out wording lands next to its task's training wordings ("held_out+train")."""
    splits = sorted({e.split for e in entries if e.split is not None})
    labels = [e.label for e in entries]
    result = {}
    for i, a in enumerate(splits):
        for b in splits[i:]:
            result[f"{a}+{b}"] = task_similarity(
                cosine, labels, lambda x, y, a=a, b=b: {entries[x].split, entries[y].split} == {a, b}
            )
    return result


@dataclass(frozen=True)
class AdapterMap:
    entries: list[Entry]
    coords: torch.Tensor  # (n, 2)
    explained: list[float]
    similarity: TaskSimilarity
    by_split: dict[str, TaskSimilarity]

    def to_json(self) -> dict:
        s = self.similarity
        return {
            "projection": "PCA of flattened delta-W = scale * B @ A over all targets",
            "explained_variance": self.explained,
            "mean_cosine_same_task": s.same_task,
            "mean_cosine_different_task": s.different_task,
            "same_task_pairs": s.same_pairs,
            "different_task_pairs": s.different_pairs,
            "by_split": {
                pair: {
                    "same_task": v.same_task,
                    "different_task": v.different_task,
                    "same": v.same_pairs,
                    "different": v.different_pairs,
                }
                for pair, v in self.by_split.items()
            },
            "points": [
                {"line": e.line, "instruction": e.instruction, "label": e.label, "split": e.split, "x": float(x), "y": float(y)}
                for e, (x, y) in zip(self.entries, self.coords.tolist())
            ],
        }


def build_map(model: TagiModel, entries: list[Entry], batch_size: int, progress: bool = True) -> AdapterMap:
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if len(entries) < 3:
        raise UserError(f"a map needs at least 3 instructions; got {len(entries)}")
    adapters: list[Adapter] = []
    with tqdm(total=len(entries), desc="adapters", unit="adapter", disable=not progress) as bar:
        for start in range(0, len(entries), batch_size):
            adapters += model.adapters([e.instruction for e in entries[start : start + batch_size]])
            bar.update(min(batch_size, len(entries) - start))
    gram = delta_gram(stack_adapters([a.weights for a in adapters]))
    coords, explained = pca_from_gram(gram)
    cosine = cosine_from_gram(gram)
    labels = [e.label for e in entries]
    return AdapterMap(entries, coords, explained, task_similarity(cosine, labels), similarity_by_split(cosine, entries))


def draw(adapter_map: AdapterMap, title: str) -> bytes:
    """PNG bytes: points coloured by label, paraphrases (same label) joined by a faint line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = [e.label for e in adapter_map.entries]
    distinct = sorted({label for label in labels if label is not None})
    palette = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=80)  # the map ships inside a size-budgeted checkpoint
    xy = adapter_map.coords
    for index, label in enumerate(distinct):
        rows = [i for i, value in enumerate(labels) if value == label]
        colour = palette(index % 20)
        if len(rows) > 1:
            centre = xy[rows].mean(dim=0)
            for i in rows:
                ax.plot([centre[0], xy[i, 0]], [centre[1], xy[i, 1]], color=colour, alpha=0.4, linewidth=0.8)
        ax.scatter(xy[rows, 0], xy[rows, 1], color=colour, s=22, label=label)
    unlabelled = [i for i, value in enumerate(labels) if value is None]
    if unlabelled:
        ax.scatter(xy[unlabelled, 0], xy[unlabelled, 1], color="grey", s=22, label="(no label)")
    if 0 < len(distinct) <= 20:
        ax.legend(fontsize=7, loc="best")
    s = adapter_map.similarity
    if s.same_task is not None and s.different_task is not None:
        ax.text(
            0.01,
            0.01,
            f"mean cosine: same task {s.same_task:.3f} ({s.same_pairs} pairs), "
            f"different tasks {s.different_task:.3f} ({s.different_pairs} pairs)",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.set_xlabel(f"PC1 ({adapter_map.explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({adapter_map.explained[1]:.0%} of variance)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_map(adapter_map: AdapterMap, out: Path, title: str) -> Path:
    """The PNG at `out` and its JSON sidecar (each point's instruction, label, coordinates) next to it."""
    out = Path(out)
    sidecar = out.with_suffix(".json")
    atomic_write_bytes(out, draw(adapter_map, title))
    write_json(sidecar, adapter_map.to_json())
    return sidecar
