"""Cross-entropy over a large vocabulary without full-size float32 copies of the logits.

`F.cross_entropy(logits.float(), ...)` on GPT-2's 16 x 1024 x 50257 bf16 logits materialises a
3.3 GB float32 copy, keeps a second one (log-softmax) for backward, and produces a float32
gradient that is cast back: about 25 GB of memory traffic per step. Here the logits are read in
row chunks: forward keeps only each row's log-sum-exp (float32, one number per row); backward
recomputes the softmax chunk by chunk and writes the gradient once, in the logits' own dtype.
The per-chunk math is plain torch, so torch.compile can fuse each chunk into one kernel
(`compile_chunks=True`, used on CUDA with `train.compile`).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_BYTES = 1 << 28  # float32 working set per chunk (256 MiB)


def _wide(block: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 are computed in float32; float64 stays float64."""
    return block.to(torch.promote_types(block.dtype, torch.float32))


def _chunk_lse(block: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(_wide(block), dim=-1)


def _chunk_grad(block: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d(sum of CE)/d(logits) for one chunk: (softmax - onehot(target)) x weight, in block's dtype."""
    grad = torch.exp(_wide(block) - lse[:, None])
    grad[torch.arange(grad.size(0), device=grad.device), targets] -= 1.0
    return (grad * weight[:, None]).to(block.dtype)


_compiled: dict[str, object] = {}


def _kernels(compile_chunks: bool):
    if not compile_chunks:
        return _chunk_lse, _chunk_grad
    if not _compiled:
        _compiled["lse"] = torch.compile(_chunk_lse, dynamic=True)
        _compiled["grad"] = torch.compile(_chunk_grad, dynamic=True)
    return _compiled["lse"], _compiled["grad"]


class _ChunkedCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, chunk_rows, compile_chunks):  # noqa: D102 (autograd protocol)
        lse_kernel, _ = _kernels(compile_chunks)
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        wide = torch.promote_types(logits.dtype, torch.float32)
        lse = torch.empty(logits.size(0), dtype=wide, device=logits.device)
        for start in range(0, logits.size(0), chunk_rows):
            lse[start:start + chunk_rows] = lse_kernel(logits[start:start + chunk_rows])
        picked = logits.gather(1, safe[:, None]).squeeze(1).to(wide)
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk_rows, ctx.compile_chunks = chunk_rows, compile_chunks
        return torch.where(valid, lse - picked, 0.0).sum()

    @staticmethod
    def backward(ctx, grad_total):  # noqa: D102
        logits, safe, valid, lse = ctx.saved_tensors
        _, grad_kernel = _kernels(ctx.compile_chunks)
        weight = valid.to(lse.dtype) * grad_total.to(lse.dtype)
        grad = torch.empty_like(logits)
        rows = ctx.chunk_rows
        for start in range(0, logits.size(0), rows):
            end = start + rows
            grad[start:end] = grad_kernel(logits[start:end], lse[start:end], safe[start:end], weight[start:end])
        return grad, None, None, None


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, compile_chunks: bool = False,
                      chunk_rows: int | None = None) -> torch.Tensor:
    """Sum of cross-entropy over rows whose target is not -100. logits: N x V; targets: N."""
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * logits.size(-1)))
    return _ChunkedCrossEntropySum.apply(logits, targets.long(), rows, compile_chunks)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor,
                        compile_chunks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: position t predicts labels[t + 1]. Shifting the labels (not the logits) keeps the
    B x T x V logits one contiguous view instead of copying all but the last position."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    total = cross_entropy_sum(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), compile_chunks)
    return total, (targets != IGNORE_INDEX).sum()
