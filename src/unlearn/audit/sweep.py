"""The relearning sweep: the relearning attack over a grid of step counts × learning rates × data sizes, by full
fine-tuning and by LoRA (peft), one ``relearn-sweep`` entry per point.

One relearning answers "does 20 steps at 5e-5 bring it back?"; the sweep shows how recovery grows with the
attacker's budget. Points that differ only in their step count share one run: with the constant learning rate
of the relearning loop, the model after k steps of a longer run is the model a k-step run ends with, so each
(mode, learning rate, data size) trains once, for the largest step count, and is scored at every step count.
The data are the first ``sweep_tokens`` tokens of the held-out forget slice (``relearn_tokens``, disjoint from
the evaluation rows).
"""

from __future__ import annotations

from ..data.chunking import TokenSplit
from ..errors import UnlearnError
from .base import attack
from .oracle import relearn_curve


def first_tokens(split: TokenSplit, tokens: int) -> TokenSplit:
    """The fewest leading rows of ``split`` that hold at least ``tokens`` scored tokens (all rows if fewer)."""
    scored = (~split.special[:, 1:]).sum(1).cumsum(0)
    n = int((scored < tokens).sum()) + 1
    return TokenSplit(split.input_ids[:n], split.special[:n])


def grid(cfg) -> list[tuple[str, float, int]]:
    """The sweep's (mode, learning rate, data size) runs, each scored at every step count of ``sweep_steps``."""
    sizes = cfg.sweep_tokens or [cfg.relearn_tokens]
    return [(mode, lr, tokens) for mode in cfg.sweep_modes for lr in cfg.sweep_lr for tokens in sizes]


@attack(
    "relearn-sweep",
    "the relearning attack over a grid of steps × learning rate × data size, full fine-tuning and LoRA",
    default=False,
)
def _sweep_attack(job) -> list[dict]:
    cfg, probes = job.cfg, job.probes
    held_out = probes["forget"].train
    if len(held_out.input_ids) == 0:
        raise UnlearnError(f"relearning needs forget data outside the evaluation rows, and "
                           f"{probes['forget'].data.source} has none left: lower --eval-tokens")  # fmt: skip
    steps = sorted(set(cfg.sweep_steps))
    out = []
    for mode, lr, tokens in grid(cfg):
        split = first_tokens(held_out, tokens)
        used = int((~split.special[:, 1:]).sum())

        def evaluate(m, mode=mode, lr=lr):
            return {w: job.score(m, probes[w].plain, f"sweep {mode} {lr:g}: {w}") for w in ("forget", "retain")}

        tuned, log, found = relearn_curve(job.unlearned.model, split, steps=steps[-1], lr=lr,
                                          batch_size=cfg.relearn_batch_size, seed=job.setup.seed,
                                          reporter=job.reporter, at_steps=steps, evaluate=evaluate,
                                          lora=cfg.sweep_lora if mode == "lora" else None)  # fmt: skip
        del tuned
        how = f"LoRA ({cfg.sweep_lora})" if mode == "lora" else "full fine-tuning"
        for n in steps:
            out.append(
                job.entry(
                    "relearn-sweep",
                    f"{mode}-{n}steps-lr{lr:g}-{tokens}tok",
                    found[n]["forget"],
                    retain=found[n]["retain"],
                    description=f"{how}, {n} steps at lr {lr:g} on {used} scored tokens of held-out forget data",
                    mode=mode,
                    steps=n,
                    lr=lr,
                    tokens=used,
                    loss=[round(r["loss"], 4) for r in log[:n]],
                )
            )
    return out
