"""A low-rank matrix kept as two factors, ``AB = A @ B``, as TransformerLens's FactoredMatrix.

``A [..., m, k]``, ``B [..., k, n]`` with ``k`` small (d_head for the QK and OV circuits of a
head), so ``AB [..., m, n]`` (d_model x d_model) is built only when asked for; the singular
values and eigenvalues come from ``k x k`` products.
"""

from __future__ import annotations

import torch


class FactoredMatrix:
    """``A @ B`` without forming it (leading axes broadcast, e.g. ``[layers, heads]``)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"factors do not chain: A {tuple(A.shape)}, B {tuple(B.shape)}")
        self.A, self.B = A, B

    @property
    def shape(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size((*batch, self.A.shape[-2], self.B.shape[-1]))

    @property
    def AB(self) -> torch.Tensor:
        """The full product ``[..., m, n]``."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """``B @ A`` ``[..., k, k]`` (square factors only): same non-zero eigenvalues as AB."""
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: torch.Tensor) -> FactoredMatrix:
        return FactoredMatrix(other @ self.A, self.B)

    def __getitem__(self, index) -> FactoredMatrix:
        """Index the leading (batch) axes: ``model.OV[3, 5]`` is layer 3, head 5."""
        index = index if isinstance(index, tuple) else (index,)
        return FactoredMatrix(self.A[index], self.B[index])

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U [..., m, k], S [..., k], Vh [..., k, n]`` with ``AB = U diag(S) Vh``, from QR
        factors of A and B and the SVD of a ``k x k`` core."""
        Qa, Ra = torch.linalg.qr(self.A)  # (m, k), (k, k)
        Qb, Rb = torch.linalg.qr(self.B.transpose(-2, -1))  # (n, k), (k, k)
        U, S, Vh = torch.linalg.svd(Ra @ Rb.transpose(-2, -1))
        return Qa @ U, S, Vh @ Qb.transpose(-2, -1)

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The non-zero eigenvalues of AB (those of BA), complex."""
        return torch.linalg.eigvals(self.BA)

    def norm(self) -> torch.Tensor:
        """The Frobenius norm of AB."""
        return self.S.pow(2).sum(-1).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.A.shape[-1]})"
