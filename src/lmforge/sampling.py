"""Sampling settings and next-token selection, shared by `generate`, `chat` and `serve`.

Order of logits processing (as HF `generate` does): repetition penalty → temperature → top-k →
top-p → min-p → sample. `temperature == 0` means greedy (argmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

# a temperature below this samples like temperature 0 (greedy): dividing logits by a denormal
# overflows to inf and the probabilities to NaN, and the distribution is one-hot long before that
GREEDY_TEMPERATURE = 1e-5

if TYPE_CHECKING:
    import torch


class SamplingError(LmforgeError, ValueError):
    """An invalid sampling setting (e.g. top_p 1.5)."""


@dataclass
class SamplingParams:
    """How to pick tokens for one request.

    Attributes:
        max_new_tokens: Stop after this many generated tokens.
        temperature: 0 for greedy decoding (so is anything below `GREEDY_TEMPERATURE`, 1e-5); higher is
            more random.
        top_k: Sample from the k most likely tokens only (0 or null: all).
        top_p: Nucleus sampling: the smallest set of tokens with probability mass >= top_p (1: off).
        min_p: Drop tokens less likely than min_p times the most likely one (0: off).
        repetition_penalty: > 1 discourages repeating prompt or output tokens (1: off).
        seed: Random seed, for reproducible sampling (null: not reproducible).
        stop: Strings that end the generation (not included in the output).
        stop_token_ids: Extra token ids that end the generation like EOS (e.g. a chat style's end of turn).
        ignore_eos: Keep generating past EOS and stop_token_ids (benchmarks).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == float("inf"):
            raise SamplingError("temperature must be finite, got inf")
        if self.top_k is not None and self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise SamplingError(f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingError(f"stop must be a list of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        import torch

        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed) % 2**64)  # any integer: manual_seed takes [0, 2**64)
        return g


def process_logits(logits: torch.Tensor, params: SamplingParams, history: torch.Tensor | None = None) -> torch.Tensor:
    """Apply penalty/temperature/top-k/top-p/min-p to one row of logits (V,) and return the new logits."""
    import torch

    logits = logits.float()
    if params.repetition_penalty != 1.0 and history is not None and history.numel():
        seen = logits.gather(0, history)
        seen = torch.where(seen < 0, seen * params.repetition_penalty, seen / params.repetition_penalty)
        logits = logits.scatter(0, history, seen)
        # an extreme penalty overflows to ±inf (5e-324 divides a logit into inf): keep the order
        big = torch.finfo(logits.dtype).max
        logits = logits.nan_to_num(nan=float("-inf"), posinf=big, neginf=-big)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k:
        k = min(params.top_k, logits.size(-1))
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = _top_p(logits, params.top_p)
    if params.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


# top-p looks at the most likely tokens first: sorting a 50k-150k vocabulary per row per step costs
# milliseconds, and the nucleus is almost always within the first few hundred tokens
_TOP_P_CANDIDATES = 256
_FEW_CANDIDATES = 64


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (at least one).

    A token is dropped when the mass of the tokens before it already reaches `top_p`. The
    `_TOP_P_CANDIDATES` most likely tokens are looked at first; the whole vocabulary is sorted only
    when their mass does not reach `top_p`.
    """
    import torch

    lse = torch.logsumexp(logits, -1)
    k = min(_TOP_P_CANDIDATES, logits.size(-1))
    values, order = torch.topk(logits, k)
    probs = (values - lse).exp()
    cum = probs.cumsum(-1)
    if k < logits.size(-1) and not float(cum[-1]) >= top_p:
        values, order = torch.sort(logits, descending=True)
        probs = (values - lse).exp()
        cum = probs.cumsum(-1)
    keep = (cum - probs) < top_p
    keep[0] = True  # (a top_p below float32's range would otherwise drop every token)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(0, order[keep], values[keep])


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None] | None = None,
    histories: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Pick the next token for each row.

    Args:
        logits: (B, V) logits of the last position of each row.
        params: one `SamplingParams` per row (rows may differ: continuous batching).
        generators: optional per-row random generators (seeded requests are reproducible).
        histories: optional per-row 1-D LongTensors of previous token ids (repetition penalty).

    Returns:
        (B,) LongTensor of chosen token ids.
    """
    import torch

    B = logits.size(0)
    if all(p.greedy and p.repetition_penalty == 1.0 for p in params):
        return logits.argmax(-1)
    out = torch.empty(B, dtype=torch.long, device=logits.device)
    gens = generators or [None] * B
    # rows whose choice lies among their most likely tokens (top-p / top-k, no penalty) are sampled
    # together, first from the `_FEW_CANDIDATES` most likely (a peaked row's nucleus is small), then
    # from `_TOP_P_CANDIDATES`; the rest row by row over the whole vocabulary
    fast = [b for b, p in enumerate(params) if not p.greedy and p.repetition_penalty == 1.0
            and (p.top_p < 1.0 or 0 < (p.top_k or 0) <= _TOP_P_CANDIDATES)]
    done: set[int] = set()
    for k in (_FEW_CANDIDATES, _TOP_P_CANDIDATES):
        # a top-k past k candidates renormalises over tokens beyond them: the next size
        rows = [b for b in fast if b not in done and (params[b].top_k or 0) <= k]
        if rows:
            done |= _sample_candidates(logits, rows, params, gens, out, k)
    for b in range(B):
        if b in done:
            continue
        p = params[b]
        row = process_logits(logits[b], p, histories[b] if histories else None)
        # inverse-CDF sampling: one cumulative sum and a binary search (torch.multinomial costs ~1 ms
        # on a 50k vocabulary); a token of probability 0 is never drawn
        cdf = None if p.greedy else row.softmax(-1).cumsum(-1)
        if cdf is None or not bool(torch.isfinite(cdf[-1])) or not float(cdf[-1]) > 0:
            # greedy, or nothing left to sample from: the most likely token
            out[b] = row.argmax() if p.greedy else logits[b].argmax()
        else:
            u = torch.rand((), generator=gens[b], device=cdf.device) * cdf[-1]
            out[b] = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)
    return out


def _sample_candidates(logits: torch.Tensor, rows: list[int], params: list[SamplingParams],
                       gens: list, out: torch.Tensor, k: int) -> set[int]:
    """Sample `rows` of `logits` from their `k` most likely tokens, all rows at once,
    as `process_logits` + inverse-CDF sampling would over the whole vocabulary: top-k, then top-p on
    the renormalised rest, then min-p. Returns the rows done (a row whose nucleus reaches past the
    candidates is left to the caller)."""
    import torch

    x = (logits if len(rows) == logits.size(0) else logits[rows]).float()  # (rows are ascending)
    inv_t = 1.0 / torch.tensor([params[b].temperature for b in rows], device=x.device)[:, None]
    k = min(k, x.size(-1))
    # a positive temperature keeps the order: pick the candidates on the raw logits, and scale only
    # them; the softmax's normaliser over the whole row is one fused pass, shifted by the row's max
    vals, order = torch.topk(x, k)  # (R, k), sorted
    vals = vals * inv_t
    top = vals[:, :1]
    lse = top + torch.addcmul(-top, x, inv_t).exp_().sum(-1, keepdim=True).log()
    p = (vals - lse).exp()
    keep = torch.ones_like(p, dtype=torch.bool)
    mass = torch.ones(len(rows), device=x.device)  # probability mass the kept tokens renormalise by
    top_k = [params[b].top_k or 0 for b in rows]
    for i, tk in enumerate(top_k):
        if 0 < tk < k:
            keep[i] &= vals[i] >= vals[i, tk - 1]  # ties with the k-th are kept, as process_logits does
    if any(0 < tk <= k for tk in top_k):
        kept_mass = (p * keep).sum(-1)
        has_k = torch.tensor([0 < tk <= k for tk in top_k], device=x.device)
        mass = torch.where(has_k, kept_mass, mass)
    top_p = torch.tensor([params[b].top_p for b in rows], device=x.device)
    pn = p * keep / mass[:, None]
    cum = pn.cumsum(-1)
    nucleus = (cum - pn) < top_p[:, None]
    nucleus[:, 0] = True
    keep &= nucleus
    # the candidates hold the whole nucleus when their (renormalised) mass reaches top_p, or when
    # top-k already cut the rest away
    complete = (cum[:, -1] >= top_p) | torch.tensor([0 < tk <= k for tk in top_k], device=x.device)
    min_p = torch.tensor([params[b].min_p for b in rows], device=x.device)
    keep &= p >= min_p[:, None] * p[:, :1]
    cdf = (p * keep).cumsum(-1)
    ok = (complete & (cdf[:, -1] > 0)).tolist()
    picked = [i for i, good in enumerate(ok) if good]
    if not picked:
        return set()
    # one draw per sampled row from its own generator (a row left to the caller draws there)
    u = torch.stack([torch.rand((), generator=gens[rows[i]], device=x.device) for i in picked])
    at = torch.tensor(picked, device=x.device)
    cdf = cdf[at]
    j = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=k - 1)
    out[torch.tensor([rows[i] for i in picked], device=x.device)] = order[at].gather(1, j)[:, 0]
    return {rows[i] for i in picked}
