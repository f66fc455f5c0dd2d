"""The adapter map: its numbers against the same quantities computed the slow, obvious way."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hypernet.adapter_map import build_map, cosine_from_gram, delta_gram, pca_from_gram, task_similarity
from hypernet.batching import stack_adapters
from hypernet.cli import main
from hypernet.export import Entry

INSTRUCTIONS = [
    ("Reverse the list.", "reverse"),
    ("Write the list backwards.", "reverse"),
    ("Reverse the list.", "reverse"),
    ("Sort the items of the list alphabetically.", "sort"),
    ("Put the items in alphabetical order.", "sort"),
    ("Count the words in the list.", "count"),
]


def flat_deltas(model, texts: list[str]) -> torch.Tensor:
    """(n, D): every target's scale * B @ A, flattened and concatenated, in float64."""
    rows = []
    for adapter in model.adapters(texts):
        w = adapter.weights
        parts = [
            (w.scale * w.lora_B[g][t, 0].double() @ w.lora_A[g][t, 0].double()).flatten() for _, g, t in model.layout.slots()
        ]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def test_gram_pca_and_cosine_equal_the_explicit_delta_w_computation(model):
    texts = [t for t, _ in INSTRUCTIONS]
    x = flat_deltas(model, texts)
    gram = delta_gram(stack_adapters([a.weights for a in model.adapters(texts)]))
    torch.testing.assert_close(gram, x @ x.T, rtol=1e-9, atol=1e-12)

    cosine = cosine_from_gram(gram)
    explicit = torch.nn.functional.cosine_similarity(x[:, None, :], x[None, :, :], dim=-1)
    torch.testing.assert_close(cosine, explicit, rtol=1e-9, atol=1e-9)

    coords, explained = pca_from_gram(gram)
    centred = x - x.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    reference = u[:, :2] * s[:2]
    for k in range(2):  # a principal axis is defined up to sign
        assert torch.allclose(coords[:, k], reference[:, k], atol=1e-8) or torch.allclose(
            coords[:, k], -reference[:, k], atol=1e-8
        )
    assert explained == pytest.approx((s[:2] ** 2 / (s**2).sum()).tolist())
    assert coords[:, 0].abs().max() > 0


def test_task_similarity_averages_pairs_by_label():
    cosine = torch.tensor([[1.0, 0.9, 0.1, 0.3], [0.9, 1.0, 0.2, 0.5], [0.1, 0.2, 1.0, 0.7], [0.3, 0.5, 0.7, 1.0]])
    s = task_similarity(cosine, ["a", "a", "b", None])
    assert (s.same_task, s.same_pairs) == (pytest.approx(0.9), 1)
    assert (s.different_task, s.different_pairs) == (pytest.approx(0.15), 2)
    assert task_similarity(cosine, [None] * 4).same_task is None


def test_map_numbers_on_a_tiny_checkpoint(model):
    entries = [Entry(i + 1, text, label=label) for i, (text, label) in enumerate(INSTRUCTIONS)]
    adapter_map = build_map(model, entries, batch_size=4, progress=False)
    x = flat_deltas(model, [t for t, _ in INSTRUCTIONS])
    cosine = cosine_from_gram(x @ x.T)
    same = [cosine[0, 1], cosine[0, 2], cosine[1, 2], cosine[3, 4]]
    assert adapter_map.similarity.same_task == pytest.approx(float(torch.stack(same).mean()))
    assert adapter_map.similarity.same_pairs == 4 and adapter_map.similarity.different_pairs == 11
    # Lines 1 and 3 are the same instruction: the same adapter, the same point.
    assert float(cosine[0, 2]) == pytest.approx(1.0) and torch.allclose(
        adapter_map.coords[0], adapter_map.coords[2], rtol=1e-9, atol=1e-9
    )
    assert not torch.allclose(adapter_map.coords[0], adapter_map.coords[1], rtol=1e-3, atol=1e-3)


def test_cli_writes_png_and_sidecar_and_prints_the_numbers(checkpoint_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"instruction": text, "task": label}) for text, label in INSTRUCTIONS] + ["oops"]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "map.png"
    code = main(
        [
            "adapters",
            "map",
            "--checkpoint",
            str(checkpoint_dir),
            "--instructions",
            str(source),
            "--out",
            str(out),
            "--label-field",
            "task",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("tagi: skipped")] == [
        f"tagi: skipped {source} line 7: invalid JSON (Expecting value)"
    ]
    assert "same task" in captured.out and "different tasks" in captured.out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 300
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert [(p["line"], p["instruction"], p["label"]) for p in sidecar["points"]] == [
        (i + 1, text, label) for i, (text, label) in enumerate(INSTRUCTIONS)
    ]
    assert sidecar["same_task_pairs"] == 4 and f"{sidecar['mean_cosine_same_task']:.4f}" in captured.out
