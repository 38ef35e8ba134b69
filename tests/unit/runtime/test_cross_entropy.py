"""The chunked cross-entropy must be the same function as torch's, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from launcher.runtime.cross_entropy import cross_entropy_sum, next_token_loss_sum


def _reference(logits, targets):
    wide = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(wide, targets, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
def test_value_and_gradient_match_torch_for_any_chunking(chunk_rows):
    torch.manual_seed(0)
    logits = torch.randn(50, 333, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 333, (50,))
    targets[::4] = -100
    ours = cross_entropy_sum(logits, targets, chunk_rows=chunk_rows)
    (grad_ours,) = torch.autograd.grad(ours * 0.5, logits)
    reference = _reference(logits, targets)
    (grad_reference,) = torch.autograd.grad(reference * 0.5, logits)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(grad_ours, grad_reference.to(grad_ours.dtype), atol=1e-12)
    assert torch.all(grad_ours[::4] == 0)  # ignored rows get no gradient at all


def test_bf16_logits_give_a_bf16_gradient_close_to_the_float32_one():
    torch.manual_seed(1)
    logits32 = torch.randn(64, 1000) * 3
    logits = logits32.to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 1000, (64,))
    ours = cross_entropy_sum(logits, targets, chunk_rows=16)
    ours.backward()
    reference = _reference(logits.detach().float().requires_grad_(), targets)
    assert logits.grad.dtype == torch.bfloat16
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_next_token_loss_shifts_labels_not_logits():
    torch.manual_seed(2)
    logits = torch.randn(3, 9, 40, requires_grad=True)
    labels = torch.randint(0, 40, (3, 9))
    labels[0, :4] = -100  # a prompt: no loss on predicting it
    total, count = next_token_loss_sum(logits, labels)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1), reduction="sum")
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)
    assert int(count) == int((labels[:, 1:] != -100).sum())
    total.backward()
    assert torch.all(logits.grad[:, -1] == 0)  # the last position predicts nothing


@pytest.mark.heavy  # inductor compiles C++ on the CPU: 15 s; the opt-in set with the other compile tests
def test_compiled_chunks_match_eager():
    """The kernels torch.compile fuses on a GPU, here through inductor's CPU backend."""
    torch.manual_seed(3)
    logits = torch.randn(40, 257, requires_grad=True)
    targets = torch.randint(0, 257, (40,))
    targets[3] = -100
    eager = cross_entropy_sum(logits, targets, chunk_rows=16)
    (grad_eager,) = torch.autograd.grad(eager, logits)
    compiled = cross_entropy_sum(logits, targets, compile_chunks=True, chunk_rows=16)
    (grad_compiled,) = torch.autograd.grad(compiled, logits)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    assert torch.allclose(grad_compiled, grad_eager, atol=1e-6)
