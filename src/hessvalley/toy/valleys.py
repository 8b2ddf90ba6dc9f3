"""Analytic "minimal valley" losses (Wei & Schwab 2020, Eq. 1, §4.2, A.6).

Every toy loss has the form of W&S Eq. 1 (plus the tilt g of Eq. 36)::

    L(θ) = ½ Σ_{i≤n} λ_i(θ̂) θ_i² + g(θ̂),    θ = (θ̄, θ̂),  θ̄ = θ_1..θ_n,  θ̂ = θ_{n+1}..θ_N

so λ_i(θ̂) are the Hessian eigenvalues of the non-degenerate block (the Hessian eigenvalue of
``a·θ_1²`` is ``2a``). Knowing λ, ∇̂λ and ∇̂²λ analytically gives the loss, its gradient and its
full Hessian, and the theory's predictions (``hessvalley.toy.theory``) in closed form.
"""

from __future__ import annotations

import torch

DTYPE = torch.float64  # the toy models run in float64 throughout


class ValleyLoss:
    """L = ½ Σ λ_i(θ̂) θ_i² + g(θ̂); subclasses give λ, g and their derivatives in θ̂."""

    name: str = "valley"
    n_nondegenerate: int
    n_params: int

    @property
    def n_valley(self) -> int:
        return self.n_params - self.n_nondegenerate

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(θ̄, θ̂): the non-degenerate and the valley (degenerate) coordinates."""
        return theta[..., : self.n_nondegenerate], theta[..., self.n_nondegenerate :]

    # -- what a subclass defines (functions of θ̂ with shape (..., m))
    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """λ_i(θ̂), shape (..., n)."""
        raise NotImplementedError

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """∂λ_i/∂θ̂_a, shape (..., n, m)."""
        raise NotImplementedError

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """∂²λ_i/∂θ̂_a∂θ̂_b, shape (..., n, m, m)."""
        raise NotImplementedError

    def tilt(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """g(θ̂), the slope of the valley floor (W&S Eq. 36); zero for a degenerate valley."""
        return theta_hat.new_zeros(theta_hat.shape[:-1])

    def tilt_grad(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(theta_hat)

    def tilt_hessian(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat.new_zeros((*theta_hat.shape, theta_hat.shape[-1]))

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇̄L, ∇̂L, λ) for the simulator's inner loop (which may overwrite the returned
        tensors); subclasses fuse it for speed."""
        lam = self.eigenvalues(theta_hat)
        grad_hat = 0.5 * torch.einsum(
            "...i,...ia->...a", theta_bar**2, self.eigenvalue_grads(theta_hat)
        )
        return lam * theta_bar, grad_hat + self.tilt_grad(theta_hat), lam

    # -- derived quantities
    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        bar, hat = self.split(theta)
        return 0.5 * (self.eigenvalues(hat) * bar**2).sum(-1) + self.tilt(hat)

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """∇L: (λ_i θ_i, ½ Σ_i θ_i² ∇̂λ_i + ∇̂g)."""
        bar, hat = self.split(theta)
        grad_bar = self.eigenvalues(hat) * bar
        grad_hat = 0.5 * torch.einsum("...i,...ia->...a", bar**2, self.eigenvalue_grads(hat))
        return torch.cat([grad_bar, grad_hat + self.tilt_grad(hat)], dim=-1)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """Full N x N Hessian of L at θ (not only the valley-floor eigenvalues)."""
        bar, hat = self.split(theta)
        n = self.n_nondegenerate
        lam = self.eigenvalues(hat)
        dlam = self.eigenvalue_grads(hat)
        d2lam = self.eigenvalue_hessians(hat)
        hess = theta.new_zeros((*theta.shape, theta.shape[-1]))
        hess[..., :n, :n] = torch.diag_embed(lam)
        cross = bar.unsqueeze(-1) * dlam
        hess[..., :n, n:] = cross
        hess[..., n:, :n] = cross.transpose(-1, -2)
        hess[..., n:, n:] = 0.5 * torch.einsum(
            "...i,...iab->...ab", bar**2, d2lam
        ) + self.tilt_hessian(hat)
        return hess

    def trace(self, theta: torch.Tensor) -> torch.Tensor:
        """T = Σ λ_i(θ̂): the Hessian trace at the projected minimum (W&S Theorem 1)."""
        return self.eigenvalues(self.split(theta)[1]).sum(-1)

    def determinant(self, theta: torch.Tensor) -> torch.Tensor:
        """Det = Π λ_i(θ̂): the non-degenerate determinant (W&S Corollary 2.1)."""
        return self.eigenvalues(self.split(theta)[1]).prod(-1)


class AbsValley(ValleyLoss):
    """W&S Fig 2b: L = |θ3+θ4| θ1² + |θ3+2θ4| θ2², so ∇̂λ is constant where the signs hold."""

    name = "abs_valley"
    n_nondegenerate = 2
    n_params = 4
    _directions = ((1.0, 1.0), (1.0, 2.0))

    def _arguments(self, theta_hat: torch.Tensor) -> torch.Tensor:
        directions = theta_hat.new_tensor(self._directions)
        return theta_hat @ directions.T

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._arguments(theta_hat).abs()

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        directions = theta_hat.new_tensor(self._directions)
        return 2.0 * torch.sign(self._arguments(theta_hat)).unsqueeze(-1) * directions

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat.new_zeros((*theta_hat.shape[:-1], 2, 2, 2))

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        directions = theta_hat.new_tensor(self._directions)
        arguments = theta_hat @ directions.T
        lam = arguments.abs().mul_(2.0)
        grad_hat = (theta_bar * theta_bar).mul_(arguments.sign_()) @ directions
        return lam * theta_bar, grad_hat, lam

    def signs(self, theta: torch.Tensor) -> torch.Tensor:
        """Signs of θ3+θ4 and θ3+2θ4; Theorem 1's test needs them fixed over a run."""
        return torch.sign(self._arguments(self.split(theta)[1]))


class GaussianValley(ValleyLoss):
    """W&S Fig 2c-d: L = (4 − 2 e^{−θ3²−θ4²}) θ1² + e^{−(θ3−θ4)²} θ2².

    Trace and determinant are anti-correlated along θ3 = −θ4: SGD-like noise moves towards
    the origin (trace down, determinant up), isotropic noise away from it.
    """

    name = "gaussian_valley"
    n_nondegenerate = 2
    n_params = 4

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1)
        d = theta_hat[..., 0] - theta_hat[..., 1]
        return torch.stack([8.0 - 4.0 * torch.exp(-r2), 2.0 * torch.exp(-(d**2))], dim=-1)

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1, keepdim=True)
        d = (theta_hat[..., 0] - theta_hat[..., 1]).unsqueeze(-1)
        diff = theta_hat.new_tensor([1.0, -1.0])
        grad1 = 8.0 * torch.exp(-r2) * theta_hat
        grad2 = -4.0 * d * torch.exp(-(d**2)) * diff
        return torch.stack([grad1, grad2], dim=-2)

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1)[..., None, None]
        d = (theta_hat[..., 0] - theta_hat[..., 1])[..., None, None]
        eye = torch.eye(2, dtype=theta_hat.dtype, device=theta_hat.device)
        diff = theta_hat.new_tensor([1.0, -1.0])
        outer = theta_hat.unsqueeze(-1) * theta_hat.unsqueeze(-2)
        hess1 = 8.0 * torch.exp(-r2) * (eye - 2.0 * outer)
        hess2 = -4.0 * torch.exp(-(d**2)) * (1.0 - 2.0 * d**2) * torch.outer(diff, diff)
        return torch.stack([hess1, hess2], dim=-3)

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        radial = torch.exp(-(theta_hat * theta_hat).sum(-1, keepdim=True))
        d = theta_hat[..., :1] - theta_hat[..., 1:]
        ridge = torch.exp(-d * d)
        lam = torch.cat([8.0 - 4.0 * radial, 2.0 * ridge], dim=-1)
        squares = theta_bar * theta_bar
        along_diff = (-2.0 * squares[..., 1:]) * d * ridge
        grad_hat = (4.0 * squares[..., :1] * radial) * theta_hat
        grad_hat[..., :1] += along_diff
        grad_hat[..., 1:] -= along_diff
        return lam * theta_bar, grad_hat, lam


class TiltedValley(ValleyLoss):
    """W&S A.6 Fig 7: L = ½ (θ2² + 1) θ1² + α θ2, a valley floor with a small slope α."""

    name = "tilted_valley"
    n_nondegenerate = 1
    n_params = 2

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat**2 + 1.0

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return (2.0 * theta_hat).unsqueeze(-2)

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.full((*theta_hat.shape[:-1], 1, 1, 1), 2.0, dtype=theta_hat.dtype)

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam = torch.addcmul(torch.ones_like(theta_hat), theta_hat, theta_hat)
        grad_hat = (theta_bar * theta_bar).mul_(theta_hat).add_(self.alpha)
        return lam * theta_bar, grad_hat, lam

    def tilt(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return self.alpha * theta_hat[..., 0]

    def tilt_grad(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.full_like(theta_hat, self.alpha)


LOSSES: dict[str, type[ValleyLoss]] = {
    cls.name: cls for cls in (AbsValley, GaussianValley, TiltedValley)
}
