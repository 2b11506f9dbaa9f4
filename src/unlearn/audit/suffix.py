"""An adversarial suffix found by a bounded GCG search (Zou et al. 2023, "Universal and transferable adversarial
attacks on aligned language models").

``suffix_len`` tokens are placed where the scored tokens begin: after the question of a QA probe (before its
answer), before the chunk of a text probe (where the text prompt attacks put their context). Starting from
``! ! … !``, each step takes the gradient of the forget tokens' loss with respect to the one-hot suffix (through
the embedding matrix), keeps the ``suffix_topk`` tokens with the most negative gradient per position, scores
``suffix_candidates`` suffixes that each change one random position to one of them, and moves to the best if it
lowers the loss (so the loss curve never rises). The search runs on ``suffix_probes`` held-out forget rows (the
relearning slice, each cut to ``suffix_target_tokens`` scored tokens); the suffix found is then scored on the
evaluation rows, which the search never saw. Special tokens are never candidates; the suffix is scored as token
ids (its decoded text, reported, may tokenise differently).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.chunking import TokenSplit
from ..errors import UnlearnError
from ..methods.losses import sequence_logprob
from .base import attack


def with_suffix(split: TokenSplit, suffix: list[int], kind: str, pad_id: int, target_tokens: int = 0) -> TokenSplit:
    """``split``'s rows with ``suffix`` (unscored) inserted before the scored tokens (QA: before the answer;
    text: before the chunk); with ``target_tokens``, each row is cut after that many scored tokens."""
    rows = []
    for ids, special in zip(split.input_ids.tolist(), split.special.tolist()):
        scored = [i for i, s in enumerate(special) if not s]
        if not scored:
            continue
        at = 0 if kind == "text" else scored[0]
        end = scored[min(target_tokens, len(scored)) - 1] + 1 if target_tokens else len(ids)
        rows.append((ids[:at] + suffix + ids[at:end], special[:at] + [True] * len(suffix) + special[at:end]))
    if not rows:
        raise UnlearnError("adversarial suffix: the probes have no scored tokens")
    width = max(len(ids) for ids, _ in rows)
    return TokenSplit(
        torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], dtype=torch.long),
        torch.tensor([marks + [True] * (width - len(marks)) for _, marks in rows], dtype=torch.bool),
    )


def _row_losses(model: nn.Module, split: TokenSplit, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each row's scored tokens, and how many there are."""
    device = next(model.parameters()).device
    sums, counts = [], []
    with torch.inference_mode():
        for ids, special in split.batches(batch_size):
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            lp, n = sequence_logprob(logits, ids.masked_fill(special.to(device), -100))
            sums.append(-lp.cpu())
            counts.append(n.cpu())
    return torch.cat(sums), torch.cat(counts)


def _gradient(model: nn.Module, split: TokenSplit, starts: list[int], suffix: torch.Tensor) -> torch.Tensor:
    """d loss / d one-hot(suffix): [suffix_len, vocabulary] (loss = mean NLL over all scored tokens)."""
    emb = model.get_input_embeddings()
    device = emb.weight.device
    one_hot = torch.zeros(len(suffix), emb.weight.shape[0], dtype=emb.weight.dtype, device=device)
    one_hot[torch.arange(len(suffix)), suffix.to(device)] = 1
    one_hot.requires_grad_(True)
    ids = split.input_ids.to(device)
    with torch.enable_grad():
        pieces = one_hot @ emb.weight
        base = emb(ids).detach()
        rows = [torch.cat([base[r, :a], pieces, base[r, a + len(suffix) :]]) for r, a in enumerate(starts)]
        logits = model(inputs_embeds=torch.stack(rows), use_cache=False).logits.float()
        lp, n = sequence_logprob(logits, ids.masked_fill(split.special.to(device), -100))
        (grad,) = torch.autograd.grad(-lp.sum() / n.sum().clamp_min(1), one_hot)  # no gradients left on the model
    return grad.float().cpu()


def gcg(
    model: nn.Module,
    split: TokenSplit,
    *,
    kind: str,
    pad_id: int,
    banned: list[int],
    length: int,
    steps: int,
    topk: int,
    candidates: int,
    target_tokens: int,
    seed: int,
    init: int,
    batch_size: int,
    progress=None,
) -> dict:
    """Search a ``length``-token suffix that lowers the loss of ``split``'s scored tokens (see the module); returns
    ``{"suffix": ids, "initial_loss", "loss": [per step], "best_loss"}``."""
    gen = torch.Generator().manual_seed(seed)
    suffix = torch.full((length,), init, dtype=torch.long)
    vocab = model.get_input_embeddings().weight.shape[0]
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[[b for b in banned if b < vocab]] = False
    k = min(topk, int(allowed.sum()))

    def losses(suffixes: list[list[int]]) -> torch.Tensor:
        rows = [with_suffix(split, s, kind, pad_id, target_tokens) for s in suffixes]
        width = max(r.input_ids.shape[1] for r in rows)
        ids = torch.cat([nn.functional.pad(r.input_ids, (0, width - r.input_ids.shape[1]), value=pad_id) for r in rows])
        special = torch.cat([nn.functional.pad(r.special, (0, width - r.special.shape[1]), value=True) for r in rows])
        total, count = _row_losses(model, TokenSplit(ids, special), batch_size)
        return total.view(len(suffixes), -1).sum(1) / count.view(len(suffixes), -1).sum(1).clamp_min(1)

    current = float(losses([suffix.tolist()])[0])
    curve, initial = [], current
    for _ in range(steps):
        rows = with_suffix(split, suffix.tolist(), kind, pad_id, target_tokens)
        starts = [0 if kind == "text" else int((~row).nonzero()[0]) - length for row in rows.special]
        grad = _gradient(model, rows, starts, suffix).masked_fill(~allowed, float("inf"))
        top = (-grad).topk(k, dim=1).indices  # [length, k]
        pos = torch.randint(length, (candidates,), generator=gen)
        tok = top[pos, torch.randint(k, (candidates,), generator=gen)]
        cands = suffix.repeat(candidates, 1)
        cands[torch.arange(candidates), pos] = tok
        scores = losses(cands.tolist())
        best = int(scores.argmin())
        if float(scores[best]) < current:
            suffix, current = cands[best].clone(), float(scores[best])
        curve.append(round(current, 5))
        if progress:
            progress(1)
    return {"suffix": suffix.tolist(), "initial_loss": initial, "loss": curve, "best_loss": current}


def _initial_token(tokenizer, banned: set[int]) -> int:
    """GCG's starting token, ``!`` (else the first token that is not special)."""
    ids = tokenizer("!", add_special_tokens=False).input_ids
    if len(ids) == 1 and ids[0] not in banned:
        return ids[0]
    return next(i for i in range(len(tokenizer)) if i not in banned)


@attack(
    "suffix",
    "a GCG adversarial suffix before the forget tokens (token-gradient search on held-out rows)",
    default=False,
)
def _suffix_attack(job) -> list[dict]:
    cfg, fp, model = job.cfg, job.fp, job.unlearned.model
    if len(fp.train.input_ids) == 0:
        raise UnlearnError(f"the suffix search needs forget data outside the evaluation rows, and "
                           f"{fp.data.source} has none left: lower --eval-tokens")  # fmt: skip
    tok = fp.tokenizer
    banned = set(tok.all_special_ids) | set(range(len(tok), model.get_input_embeddings().weight.shape[0]))
    init = _initial_token(tok, banned)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    probes = TokenSplit(fp.train.input_ids[: cfg.suffix_probes], fp.train.special[: cfg.suffix_probes])
    with job.reporter.task("suffix search", cfg.suffix_steps, unit="steps") as advance:
        found = gcg(model, probes, kind=fp.kind, pad_id=pad_id, banned=sorted(banned), length=cfg.suffix_len,
                    steps=cfg.suffix_steps, topk=cfg.suffix_topk, candidates=cfg.suffix_candidates,
                    target_tokens=cfg.suffix_target_tokens, seed=job.setup.seed, init=init,
                    batch_size=job.setup.batch_size, progress=advance)  # fmt: skip
    split = with_suffix(fp.plain, found["suffix"], fp.kind, pad_id)
    initial = with_suffix(fp.plain, [init] * cfg.suffix_len, fp.kind, pad_id)
    text = tok.decode(found["suffix"])
    return [
        job.entry(
            "suffix",
            f"gcg-{cfg.suffix_len}",
            job.score(model, split, "suffix: forget"),
            original_attacked=job.score(job.orig.model, split, "suffix original")[job.metric],
            description=f"{cfg.suffix_len}-token suffix {text!r} found in {cfg.suffix_steps} GCG steps on "
            f"{len(probes.input_ids)} held-out forget rows, placed before the scored tokens",
            suffix=text,
            suffix_ids=found["suffix"],
            initial_suffix_metric=job.score(model, initial, "suffix initial")[job.metric],
            search_loss={"initial": round(found["initial_loss"], 5), "best": round(found["best_loss"], 5)},
            loss=found["loss"],
        )
    ]
