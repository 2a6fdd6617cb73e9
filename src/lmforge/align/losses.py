"""Preference losses: each one small function of the policy's (and the reference's) sequence log-probs.

Every function takes per-sequence log-probabilities of the completions (summed over completion tokens,
or, where the method says so, averaged per token) and returns the per-example losses; the recipe
averages them. The formulas are those of the papers, written as TRL 1.16 computes them (a test checks
loss and gradients against TRL's trainers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("dpo", "ipo", "simpo", "orpo", "kto")
#: the methods whose loss needs the reference model's log-probs
NEEDS_REFERENCE = ("dpo", "ipo", "kto")


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, eq. 7), with label
    smoothing ε as conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences"): the
    expected loss when each label is flipped with probability ε.

        Δ = (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))
        loss = -(1 - ε) log σ(β Δ) - ε log σ(-β Δ)

    Args: summed completion log-probs (B,) of the policy and the reference; β; ε in [0, 0.5).
    """
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036, eq. 17): the squared distance of the log-ratio margin to 1/(2β).

        loss = ((log π(y_w)/π_ref(y_w) - log π(y_l)/π_ref(y_l)) - 1/(2β))²

    The log-probs are per-token averages over each completion (as TRL does, with the IPO authors'
    agreement: the margin then does not grow with the completion's length).
    """
    return ((chosen - ref_chosen) - (rejected - ref_rejected) - 1 / (2 * beta)) ** 2


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv:2405.14734, eq. 6): the length-normalised log-prob is the reward, with a target margin γ;
    no reference model.

        loss = -log σ(β (avg log π(y_w|x) - avg log π(y_l|x)) - γ)

    Args: per-token average completion log-probs (B,); β; γ.
    """
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, nll: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv:2403.07691, eqs. 4-7): the SFT loss on the chosen completions plus λ times the log-sigmoid of
    the log odds ratio; no reference model.

        log odds(y) = log p - log(1 - p),  p = exp(avg log π(y|x))
        loss = nll - λ log σ(log odds(y_w) - log odds(y_l))

    Args: per-token average completion log-probs (B,); the chosen completions' NLL (a scalar); λ.
    """
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return nll - lam * F.logsigmoid(log_odds)


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: the batch's KL estimate from mismatched (prompt, completion) pairs,
    detached and clamped at 0 (Ethayarajh et al. 2024, section 4.1)."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306, eq. 7): unpaired completions, each desirable or not, valued against the
    reference point z0 = `kl` (see `kto_kl`).

        r = log π(y|x) - log π_ref(y|x)
        loss = λ_D (1 - σ(β (r - z0)))  if desirable,  λ_U (1 - σ(β (z0 - r)))  otherwise

    Args: summed completion log-probs (B,) of policy and reference; `desirable` (B,) bool; z0; β; λ_D, λ_U.
    """
    r = logps - ref_logps
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - kl))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (kl - r))))
