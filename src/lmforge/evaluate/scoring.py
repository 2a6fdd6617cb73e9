"""Log-likelihood of continuations given contexts, batched, with the KV cache shared.

    lls = loglikelihoods(model, [(context_ids, continuation_ids), ...], batch_size=32)
    # -> [(sum of log p(continuation | context), whether greedy decoding would produce it), ...]

What is shared (lm-eval's `hf` backend shares a context only among one-token continuations, and
computes the head and a log-softmax at every position):
- a context is run once for all its continuations (a question's options): a one-token continuation
  (MMLU's letter " A") costs nothing more than the context; longer ones run only their own tokens,
  on a copy of the context's keys/values;
- contexts of a batch that start alike (the same few-shot preamble, the same subject header) run
  the common prefix once, copied into every row's cache (when that saves enough: see MIN_SAVED_TOKENS);
- the head (the vocabulary product, ~20% of SmolLM2's FLOPs per token) runs only at the positions
  that predict a scored token.
All of it goes through `GPT.forward`, so the model's runner (the CPU kernels) does the work.
Contexts are sorted by length within each prefix group, so a batch pads little.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer

# A prefix is shared (run once, copied into each row's cache) when it is at least MIN_SHARED_PREFIX
# tokens and sharing it saves MIN_SAVED_TOKENS of prefill in a batch (a rough allowance for its own
# forward, the copies and the masked attention a cache needs; on 48 MMLU items it was as fast as
# sharing every 16+ token prefix, once batches were cut by length). So MMLU's subject header (~17 tokens) is
# shared among a full topic's questions but not among the 3 or 4 of a topic in a small subsample,
# which then batch with the others by length; a k-shot preamble is shared among 2 questions.
MIN_SHARED_PREFIX = 16
MIN_SAVED_TOKENS = 256
# a batch's rows are at least this fraction of its longest one (so padding wastes at most ~20%): a
# 200-item MMLU sample's long tail (up to ~900 tokens) padded 32 rows of ~120 to its length
MIN_FILL = 0.8


def _worth_sharing(rows: int, prefix: int) -> bool:
    return prefix >= MIN_SHARED_PREFIX and (rows - 1) * prefix >= MIN_SAVED_TOKENS


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of `context` and `continuation`, split as lm-eval splits them: trailing spaces of the
    context move to the continuation, the whole text is encoded and the context's tokens cut off
    (so a merge across the boundary is tokenized as in the whole text). No BOS is added."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation, bos=False)
    ctx = tok.encode(context, bos=False)
    return ctx, whole[len(ctx):]


def _common_prefix(seqs: Sequence[tuple[int, ...]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _batches(contexts: list[tuple[int, ...]], batch_size: int) -> list[list[tuple[int, ...]]]:
    """Contexts in batches: those sharing a prefix worth sharing together (sorted order puts them
    side by side), each group longest first; the rest pooled, longest first."""
    ordered = sorted(contexts)
    groups, loose, current = [], [], [ordered[0]]

    def close(group: list[tuple[int, ...]]) -> None:
        keep = _worth_sharing(min(len(group), batch_size), _common_prefix([group[0], group[-1]]))
        (groups.append(group) if keep else loose.extend(group))

    for ctx in ordered[1:]:
        if _common_prefix([current[0], ctx]) >= MIN_SHARED_PREFIX:
            current.append(ctx)
        else:
            close(current)
            current = [ctx]
    close(current)
    out: list[list[tuple[int, ...]]] = []
    for group in [*groups, loose]:
        batch: list[tuple[int, ...]] = []
        for ctx in sorted(group, key=len, reverse=True):
            # a batch pads to its first (longest) context: start a new one where lengths drop
            if batch and (len(batch) == batch_size or len(ctx) < MIN_FILL * len(batch[0])):
                out.append(batch)
                batch = []
            batch.append(ctx)
        if batch:
            out.append(batch)
    return out


def _pad(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def _score(model: GPT, hidden: torch.Tensor, targets: list[list[int]]) -> list[tuple[float, bool]]:
    """Sum of log-probs of `targets[i]` from hidden states `hidden[i, :len(targets[i])]`, and greedy-ness."""
    import torch

    rows = torch.cat([torch.full((len(t),), i) for i, t in enumerate(targets)])
    cols = torch.cat([torch.arange(len(t)) for t in targets])
    logp = torch.log_softmax(model.head(hidden[rows, cols]).float(), dim=-1)  # (N, vocab)
    tgt = torch.tensor([x for t in targets for x in t], device=logp.device)
    picked = logp.gather(1, tgt[:, None])[:, 0]
    greedy = logp.argmax(-1) == tgt
    out, start = [], 0
    for t in targets:
        n = len(t)
        out.append((float(picked[start:start + n].sum()), bool(greedy[start:start + n].all())))
        start += n
    return out


def loglikelihoods(model: GPT, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                   batch_size: int = 32) -> list[tuple[float, bool]]:
    """log p(continuation | context) summed over the continuation's tokens, and whether each of its
    tokens is the argmax, for every `(context_ids, continuation_ids)` request (in order).

    A context must have at least one token and a continuation at least one; a pair longer than the
    model's block size keeps the continuation and the end of the context (as lm-eval does).
    """
    import torch

    limit = model.config.block_size
    reqs = []
    for ctx, cont in requests:
        if not ctx or not cont:
            raise ValueError("each request needs a non-empty context and continuation")
        if len(cont) > limit:
            raise ValueError(f"a continuation of {len(cont)} tokens exceeds the model's block size {limit}")
        reqs.append((tuple(ctx)[-(limit + 1 - len(cont)):], tuple(cont)))
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(reqs):
        by_ctx.setdefault(ctx, []).append(i)
    results: list[tuple[float, bool] | None] = [None] * len(reqs)
    batches = _batches(list(by_ctx), batch_size)
    progress = _Progress(len(by_ctx))
    with torch.inference_mode():
        for batch in batches:
            members = [(c, i) for c in batch for i in by_ctx[c]]
            for (ctx, i), res in zip(members, _score_batch(model, batch, [(c, reqs[i][1]) for c, i in members],
                                                           batch_size)):
                results[i] = res
            progress.advance(len(batch))
    return results  # type: ignore[return-value]


#: seconds between two progress lines of a long scoring run (on stderr; a short run prints none)
PROGRESS_EVERY_S = 30.0


class _Progress:
    """`scored 3,200/14,042 contexts (23%) | 11.8/s | ETA 15m18s` on stderr, every PROGRESS_EVERY_S seconds."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.t0 = self.last = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = int((self.total - self.done) / rate)
        print(f"scored {self.done:,}/{self.total:,} contexts ({100 * self.done / self.total:.0f}%) | {rate:.1f}/s | "
              f"ETA {eta // 60}m{eta % 60:02d}s", file=sys.stderr, flush=True)


def _score_batch(model: GPT, contexts: list[tuple[int, ...]], pairs: list[tuple[tuple[int, ...], tuple[int, ...]]],
                 batch_size: int) -> list[tuple[float, bool]]:
    """Scores of `pairs` (each context one of `contexts`): the contexts in one forward (their shared
    prefix once), then the continuations longer than one token on copies of their context's cache."""
    import torch

    device = model.device
    row_of = {c: r for r, c in enumerate(contexts)}
    shared = _common_prefix(contexts) if len(contexts) > 1 else 0
    shared = min(shared, min(len(c) for c in contexts) - 1)  # every row keeps a token of its own
    if not _worth_sharing(len(contexts), shared):
        shared = 0
    long_conts = any(len(cont) > 1 for _, cont in pairs)
    cache = None
    if shared or long_conts:
        # padded rows write past their own end: room for the longest context + the longest continuation
        length = max(len(c) for c in contexts) + max(len(cont) for _, cont in pairs)
        cache = model.new_kv_cache(len(contexts), length)
    if shared:
        one = model.new_kv_cache(1, shared)
        model(torch.tensor([contexts[0][:shared]], device=device), cache=one, return_hidden=True,
              logits_to_keep=1)
        for k, k1 in zip(cache.k + cache.v, one.k + one.v):
            k[:, :, :shared] = k1
    ids = _pad([c[shared:] for c in contexts], device)  # (B, T)
    pos = torch.arange(shared, shared + ids.size(1), device=device)
    if cache is None:
        hidden = model(ids, return_hidden=True)  # (B, T, d), plain causal attention
    else:
        hidden = model(ids, input_pos=pos, cache=cache, return_hidden=True)
    last = hidden[torch.arange(len(contexts)), torch.tensor([len(c) - shared - 1 for c in contexts])]  # (B, d)
    scores: list[tuple[float, bool] | None] = [None] * len(pairs)
    short = [j for j, (_, cont) in enumerate(pairs) if len(cont) == 1]
    if short:
        for j, res in zip(short, _score(model, last[[row_of[pairs[j][0]] for j in short]][:, None],
                                        [list(pairs[j][1]) for j in short])):
            scores[j] = res
    longer = [j for j, (_, cont) in enumerate(pairs) if len(cont) > 1]
    for start in range(0, len(longer), batch_size):
        chunk = longer[start:start + batch_size]
        src = torch.tensor([row_of[pairs[j][0]] for j in chunk], device=device)
        rows = model.new_kv_cache(len(chunk), cache.max_seq_length)
        for k, k_src in zip(rows.k + rows.v, cache.k + cache.v):
            k.copy_(k_src[src])  # slots past a row's context are rewritten before they are read
        conts = [pairs[j][1] for j in chunk]
        ids = _pad([c[:-1] for c in conts], device)
        cpos = torch.tensor([len(pairs[j][0]) for j in chunk], device=device)[:, None] + torch.arange(ids.size(1))
        h = model(ids, input_pos=cpos, cache=rows, return_hidden=True)  # (R, T, d)
        h = torch.cat([last[src][:, None], h], dim=1)  # position len(ctx)-1 predicts the first token
        for j, res in zip(chunk, _score(model, h, [list(c) for c in conts])):
            scores[j] = res
    return scores  # type: ignore[return-value]
