import torch

from hypernet.batching import AdapterBatcher
from hypernet.lora import add_lora, delta_weight, lora_delta
from hypernet.targets import LoraWeights, TargetLayout, TargetModule


def dense_reference(y, x, A, B, scale):
    return torch.stack([y[i] + scale * x[i] @ (B[i] @ A[i]).T for i in range(x.shape[0])])


def test_add_lora_matches_dense_per_example_math():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 12, generator=g)
    A, B = torch.randn(3, 4, 16, generator=g), torch.randn(3, 12, 4, generator=g)
    expected = dense_reference(y, x, A, B, 0.5)
    with torch.no_grad():
        assert torch.allclose(add_lora(y.clone(), x, A, B, 0.5), expected, atol=1e-5)
    A.requires_grad_(True)
    out = add_lora(y, x, A, B, 0.5)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    assert A.grad is not None and A.grad.abs().sum() > 0
    assert torch.allclose(lora_delta(x, A, B, 0.5) + y, expected, atol=1e-5)


def test_zero_rows_leave_the_base_output_unchanged():
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 6)
    A, B = torch.randn(2, 2, 8), torch.randn(2, 6, 2)
    A[1] = 0
    B[1] = 0
    with torch.no_grad():
        out = add_lora(y.clone(), x, A, B, 2.0)
    assert torch.equal(out[1], y[1])
    assert not torch.allclose(out[0], y[0])


def test_delta_weight_is_invariant_to_factor_ambiguity():
    A, B = torch.randn(4, 10), torch.randn(7, 4)
    M = torch.randn(4, 4) + 4 * torch.eye(4)
    assert torch.allclose(delta_weight(A, B, 2.0), delta_weight(torch.linalg.solve(M, A), B @ M, 2.0), atol=1e-4)


def one_adapter(value: float) -> LoraWeights:
    return LoraWeights({"4x5": torch.full((3, 1, 2, 4), value)}, {"4x5": torch.full((3, 1, 5, 2), value)}, 2.0)


def test_batcher_places_rows_and_reuses_its_workspace():
    layout = TargetLayout(
        tuple(TargetModule("encoder", i, "self", "q", f"encoder.block.{i}.layer.0.SelfAttention.q", 4, 5) for i in range(3))
    )
    batcher = AdapterBatcher(layout, rank=2, scale=2.0, dtype=torch.float32, device=torch.device("cpu"))
    one, two = one_adapter(1.0), one_adapter(2.0)
    batch = batcher.assemble([one, None, two])
    assert batch.batch_size == 3 and batch.lora_A["4x5"].shape == (3, 3, 2, 4)
    assert torch.equal(batch.lora_A["4x5"][:, 1], torch.zeros(3, 2, 4))
    assert torch.equal(batch.lora_B["4x5"][:, 2], torch.full((3, 5, 2), 2.0))
    workspace = batcher.lora_A["4x5"].data_ptr()
    batch = batcher.assemble([two, two])  # rows change: copied; no new allocation
    assert batcher.lora_A["4x5"].data_ptr() == workspace
    assert torch.equal(batch.lora_A["4x5"][:, 0], torch.full((3, 2, 4), 2.0))
    assert batch.lora_A["4x5"][1].is_contiguous()  # one layer's (b, r, in) block feeds bmm directly
    batch = batcher.assemble([None, one, two, one, None])  # grows, keeps correctness
    assert torch.equal(batch.lora_A["4x5"][:, 0], torch.zeros(3, 2, 4))
    assert torch.equal(batch.lora_A["4x5"][:, 3], torch.ones(3, 2, 4))


def test_select_maps_examples_to_adapters():
    batch = LoraWeights({"g": torch.arange(3.0).view(1, 3, 1, 1)}, {"g": torch.zeros(1, 3, 1, 1)}, 1.0)
    assert batch.select([2, 2, 0]).lora_A["g"].flatten().tolist() == [2.0, 2.0, 0.0]


def test_add_lora_is_in_place_only_when_no_gradient_is_recorded():
    """In place saves the (b, t, out) allocation at inference; with autograd it would overwrite a
    tensor the caller (or the graph) still needs."""
    g = torch.Generator().manual_seed(1)
    x, A, B = torch.randn(2, 3, 8, generator=g), torch.randn(2, 2, 8, generator=g), torch.randn(2, 6, 2, generator=g)
    y = torch.randn(2, 3, 6, generator=g)
    expected = dense_reference(y, x, A, B, 1.5)
    for context in (torch.no_grad(), torch.enable_grad()):  # nothing requires grad: no gradient is recorded either way
        target = y.clone()
        with context:
            out = add_lora(target, x, A, B, 1.5)
        assert out.data_ptr() == target.data_ptr() and torch.allclose(out, expected, atol=1e-5)
    y_leaf = y.clone().requires_grad_(True)
    out = add_lora(y_leaf, x, A, B, 1.5)
    assert out.data_ptr() != y_leaf.data_ptr() and torch.equal(y_leaf.detach(), y)
    out.sum().backward()
    assert torch.equal(y_leaf.grad, torch.ones_like(y))
