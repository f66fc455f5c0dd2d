import torch

from hypernet.lora import add_lora, delta_weight, lora_delta
from hypernet.targets import LoraWeights


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


def test_concat_and_select_place_rows():
    one = LoraWeights({"g": torch.ones(3, 1, 2, 4)}, {"g": torch.ones(3, 1, 5, 2)}, 2.0)
    two = LoraWeights({"g": 2 * torch.ones(3, 1, 2, 4)}, {"g": 2 * torch.ones(3, 1, 5, 2)}, 2.0)
    batch = LoraWeights.concat([one, None, two])
    assert batch.batch_size == 3
    assert batch.lora_A["g"].shape == (3, 3, 2, 4)
    assert torch.equal(batch.lora_A["g"][:, 1], torch.zeros(3, 2, 4))
    assert torch.equal(batch.lora_B["g"][:, 2], 2 * torch.ones(3, 5, 2))
    picked = batch.select([2, 2, 0])
    assert torch.equal(picked.lora_A["g"][:, 0], 2 * torch.ones(3, 2, 4))
    assert torch.equal(picked.lora_A["g"][:, 2], torch.ones(3, 2, 4))
