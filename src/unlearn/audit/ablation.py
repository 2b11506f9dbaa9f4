"""Direction ablation: project one difference-of-means direction out of the residual stream.

Arditi et al. 2024 ("Refusal in language models is mediated by a single direction") and Łucki et al. 2024 ("An
adversarial perspective on machine unlearning for AI safety"): unlearning often moves the forget data's
activations along a few directions instead of removing what the model knows. At each residual-stream *site*
(0 = the embeddings entering block 1, k = the output of block k) the direction r = mean(forget) − mean(retain)
of the unlearned model's activations on held-out forget and retain rows (the relearning slices, never the
evaluation rows) is normalised and projected out, h ← h − (h·r̂) r̂, by a forward hook, at that site only
(``ablate_at=layer``) or at every site (``all``, Arditi et al.'s directional ablation); the forget and retain
probes are then scored. The attack reports the site where the forget metric comes back most, and every site's.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..data.chunking import TokenSplit
from ..errors import UnlearnError
from .base import attack


def n_sites(model: nn.Module, adapter) -> int:
    """Residual-stream sites of ``model``: the embeddings and the output of every block."""
    return adapter.n_layers(model) + 1


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _site_hooks(model: nn.Module, adapter, sites, edit) -> list:
    """Hooks that pass the hidden state at each of ``sites`` through ``edit(site, hidden) -> hidden | None``
    (None: unchanged). Site 0 is block 1's input (a pre-hook), site k the output of block k."""
    blocks = adapter.blocks(model)
    handles = []
    for site in sites:
        if site == 0:

            def pre(_module, args, kwargs, site=site):
                new = edit(site, _hidden(args, kwargs))
                if new is None:
                    return None
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

            handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(_module, _inputs, output, site=site):
                hidden = output[0] if isinstance(output, tuple) else output
                new = edit(site, hidden)
                if new is None:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(blocks[site - 1].register_forward_hook(post))
    return handles


@torch.inference_mode()
def mean_activations(model: nn.Module, adapter, split: TokenSplit, *, batch_size: int) -> torch.Tensor:
    """[sites, hidden] float32 mean of the residual stream over the scored (non-special) positions of ``split``."""
    sites = range(n_sites(model, adapter))
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def keep(site, hidden):
        h = hidden.float()[mask[0]]
        sums[site] = sums.get(site, 0) + h.sum(0)

    handles = _site_hooks(model, adapter, sites, keep)
    count = 0
    try:
        for ids, special in split.batches(batch_size):
            mask[:] = [~special.to(device)]
            count += int(mask[0].sum())
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise UnlearnError("direction ablation: the held-out rows have no scored tokens")
    return torch.stack([sums[s] / count for s in sites]).clone()


@contextlib.contextmanager
def ablated(model: nn.Module, adapter, direction: torch.Tensor, sites):
    """Within the block, ``direction`` (any norm) is projected out of the residual stream at ``sites``."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)

    def project(_site, hidden):
        h = hidden.float()
        r = unit.to(h.device)
        return (h - (h @ r).unsqueeze(-1) * r).to(hidden.dtype)

    handles = _site_hooks(model, adapter, sites, project)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def direction_scan(model, adapter, forget: TokenSplit, retain: TokenSplit, score, *, batch_size: int,
                   sites=None, everywhere: bool = False) -> list[dict]:  # fmt: skip
    """For each site: the difference-of-means direction of ``model`` between ``forget`` and ``retain`` rows, and
    ``score(model, site)`` (a dict) with that direction projected out at the site (``everywhere``: at every
    site). Returns ``[{"site", "norm", "scores"}]``; a site where the means coincide is scored without ablation."""
    total = n_sites(model, adapter)
    sites = list(range(total)) if sites is None else list(sites)
    bad = [s for s in sites if not 0 <= s < total]
    if bad:
        raise UnlearnError(f"ablate_layers {bad} out of range: this model has sites 0..{total - 1}")
    means = [mean_activations(model, adapter, split, batch_size=batch_size) for split in (forget, retain)]
    diff = (means[0] - means[1]).clone()
    out = []
    for site in sites:
        norm = float(diff[site].norm())
        where = range(total) if everywhere else [site]
        with ablated(model, adapter, diff[site], where if norm > 0 else []):
            out.append({"site": site, "norm": norm, "scores": score(model, site)})
    return out


@attack(
    "ablate",
    "project the forget-vs-retain difference-of-means direction out of the residual stream, site by site",
    default=False,
)
def _ablate_attack(job) -> list[dict]:
    cfg, probes, model = job.cfg, job.probes, job.unlearned.model
    for which in ("forget", "retain"):
        if len(probes[which].train.input_ids) == 0:
            raise UnlearnError(
                f"direction ablation needs {which} data outside the evaluation rows, and "
                f"{probes[which].data.source} has none left: lower --eval-tokens"
            )

    def score(m, site):
        return {w: job.score(m, probes[w].plain, f"ablate site {site}: {w}") for w in ("forget", "retain")}

    scan = direction_scan(model, job.adapter, probes["forget"].train, probes["retain"].train, score,
                          batch_size=job.setup.batch_size, sites=cfg.ablate_layers,
                          everywhere=cfg.ablate_at == "all")  # fmt: skip
    metric = job.metric
    values = [s["scores"]["forget"][metric] for s in scan]
    best = max(range(len(scan)), key=lambda i: (values[i], i))
    site = scan[best]["site"]
    where = "every site" if cfg.ablate_at == "all" else ("the embeddings" if site == 0 else f"block {site}'s output")
    return [
        job.entry(
            "ablate",
            "best-layer",
            scan[best]["scores"]["forget"],
            retain=scan[best]["scores"]["retain"],
            description=f"difference-of-means direction of site {site} of {len(scan)} tried (the best) projected "
            f"out of {where}",
            best_layer=site,
            ablate_at=cfg.ablate_at,
            sites=[s["site"] for s in scan],
            per_site={w: [s["scores"][w][metric] for s in scan] for w in ("forget", "retain")},
            direction_norm=[round(s["norm"], 6) for s in scan],
        )
    ]
