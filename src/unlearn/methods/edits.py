"""Edit methods: change the weights directly from a few gradients or a short fine-tune, without unlearning training.

* ``ssd`` — Selective Synaptic Dampening (Foster, Schoepf & Brintrup, "Fast Machine Unlearning Without
  Retraining Through Selective Synaptic Dampening", AAAI 2024; reference code
  https://github.com/if-loops/selective-synaptic-dampening, ``ssd.py``): estimate a diagonal Fisher importance
  of every parameter on the forget and on the retain data, then shrink the parameters that matter far more to
  the forget data.
* ``task-vector`` — task-vector negation (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
  fine-tune a copy on the forget data, and subtract the resulting weight change from the original.

Each step is a separate function (:func:`fisher_diagonal`, :func:`dampen`, :func:`negate_task_vector`) so
that the formulas can be pinned on hand-computable inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UnlearnError
from . import losses as L
from .registry import MethodResult, register
from .training import TrainConfig, batches, train


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(s in name for s in exclude)


# --------------------------------------------------------------------------------------------------------- SSD


class SSDConfig(BaseModel):
    """Parameters of Selective Synaptic Dampening (defaults: the paper and its reference code)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    selection_weighting: float = Field(
        10.0,
        gt=0,
        description="α: dampen a parameter when I_forget > α·I_retain (SSD paper and code: 10; 5 for ViT)",
    )
    dampening_constant: float = Field(
        1.0,
        ge=0,
        description="λ: multiply a selected parameter by min(λ·I_retain / I_forget, 1) (SSD paper and code: 1)",
    )
    batch_size: int = Field(4, ge=1, description="chunks per batch of the importance estimate")
    max_batches: int | None = Field(
        16,
        ge=0,
        description="batches per corpus for the importance estimate (a token budget; None or 0 = the whole "
        "statistics split, at most one pass)",
    )
    exclude: list[str] = Field(
        ["embed_tokens", "lm_head", "wte", "embed_in", "embed_out"],
        description="parameters whose name contains any of these substrings are left alone. The SSD code makes "
        "every parameter a candidate; here the token embeddings and LM head are left out by default, because "
        "in a language model with tied embeddings dampening them broke the bundled model on TOFU-mini "
        "(utility 0.000; 0.359 with them left out). [] restores the paper's behaviour",
    )


def fisher_diagonal(
    model: torch.nn.Module,
    split,
    *,
    batch_size: int,
    max_batches: int | None,
    seed: int,
    exclude: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
    per_token: bool = False,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher importance of every parameter on a token split: I = mean over batches of (∂NLL/∂θ)².

    Each batch contributes the square of the gradient of its *batch-mean* next-token NLL (the empirical Fisher
    as the SSD reference code computes it, ``calc_importance``: one backward pass per mini-batch, gradients
    squared and averaged over the mini-batches) rather than the mean of per-example squared gradients — one
    backward pass per batch instead of per example. The value thus depends on the batch size; forget and
    retain importances share it, so their ratio, which is all SSD uses, is comparable.

    Batches come from :func:`~unlearn.methods.training.batches` with ``seed`` (one shuffled pass over the split,
    cut to ``max_batches`` when set). Gradients and importances are float32 (the model must be float32); the
    model runs in eval mode (no dropout). Parameters whose name contains an ``exclude`` substring are skipped.
    Returns ``{parameter name: importance}`` (names as in ``named_parameters``, tied weights once).

    ``per_token=True`` weights each batch's squared gradient by its number of scored tokens and divides by the
    total (I = Σ_b n_b·g_b² / Σ_b n_b), as the FILA authors' importance code does.
    """
    n_chunks = len(split.input_ids)
    n_batches = math.ceil(n_chunks / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    params = {n: p for n, p in model.named_parameters() if not _excluded(n, exclude)}
    importances = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
    device = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    total = 0
    try:
        with torch.enable_grad():
            source = batches(split, batch_size, seed)
            for _ in range(n_batches):
                batch = {k: v.to(device) for k, v in next(source).items()}
                for p in params.values():
                    p.grad = None
                loss = L.nll(_logits(model, batch), batch["labels"])
                loss.backward()
                weight = _scored_tokens(batch) if per_token else 1
                total += weight
                for n, p in params.items():
                    if p.grad is not None:
                        importances[n] += p.grad.detach().float().square() * weight
                if progress is not None:
                    progress(batch["input_ids"].numel())
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(grad_state[n])
        model.train(was_training)
    for imp in importances.values():
        imp /= max(1, total)
    return importances


def _scored_tokens(batch: dict) -> int:
    """Labels ≠ −100 in ``batch``, counted before the next-token shift as the FILA code counts them (on QA
    records, where the first label is a prompt token, this is exactly the number of scored tokens)."""
    return int((batch["labels"] != -100).sum())


@torch.no_grad()
def dampen(
    params: dict[str, torch.Tensor],
    forget_importance: dict[str, torch.Tensor],
    retain_importance: dict[str, torch.Tensor],
    alpha: float,
    lam: float,
) -> tuple[int, int]:
    """SSD's edit, in place: every element with I_f > α·I_r becomes θ · min(λ·I_r / I_f, 1).

    Selection with α and dampening with λ as in the SSD paper (eqs. 3–4) and ``modify_weight`` of its code
    (the factor bounded by 1 so no parameter grows). Only the tensors named in ``forget_importance`` are
    touched. Returns (number of elements dampened, number of elements considered).
    """
    dampened = total = 0
    for name, imp_f in forget_importance.items():
        p = params[name]
        imp_f = imp_f.to(device=p.device, dtype=torch.float32)
        imp_r = retain_importance[name].to(device=p.device, dtype=torch.float32)
        selected = imp_f > alpha * imp_r  # implies I_f > 0: the division below is safe where it is used
        factor = torch.where(selected, (lam * imp_r / imp_f).clamp(max=1.0), torch.ones_like(imp_f))
        p.mul_(factor.to(p.dtype))
        dampened += int(selected.sum())
        total += p.numel()
    return dampened, total


@register(
    "ssd", SSDConfig, "selective synaptic dampening: shrink forget-specific weights (Foster et al. 2024)", budget=False
)
def ssd(ctx, cfg: SSDConfig) -> MethodResult:
    """Fisher importances on the forget and retain statistics splits, then :func:`dampen` (float32, in place).

    The paper's reference importance I_D is measured on the full training data (forget included); here the
    retain corpus stands in for it, as the forget/retain split is all a run has. Forget batches are drawn with
    the run's seed, retain batches with seed + 1 (as in the training loop), so a run is reproducible.
    """
    model = ctx.model.float()  # gradients, importances and the edit in float32 (the model may be bf16)
    imps = {}
    for i, (which, corpus) in enumerate((("forget", ctx.forget), ("retain", ctx.retain))):
        split = corpus.stats
        n = math.ceil(len(split.input_ids) / cfg.batch_size)
        n = min(n, cfg.max_batches) if cfg.max_batches else n
        tokens = min(len(split.input_ids), n * cfg.batch_size) * split.input_ids.shape[-1]
        with ctx.reporter.task(f"SSD importance: {which}", tokens) as advance:
            imps[which] = fisher_diagonal(
                model,
                split,
                batch_size=cfg.batch_size,
                max_batches=cfg.max_batches,
                seed=ctx.config.seed + i,
                exclude=cfg.exclude,
                progress=advance,
            )
    params = dict(model.named_parameters())
    n_damp, n_total = dampen(params, imps["forget"], imps["retain"], cfg.selection_weighting, cfg.dampening_constant)
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=f"dampened {n_damp} of {n_total} parameters",
        extra={
            "dampened": n_damp,
            "total": n_total,
            "alpha": cfg.selection_weighting,
            "lambda": cfg.dampening_constant,
        },
    )


# ------------------------------------------------------------------------------------------------- task vector


class TaskVectorConfig(TrainConfig):
    """The shared training settings (for fine-tuning on the forget data) plus the negation scale α.

    ``lr`` keeps the shared default 1e-5 (a typical full fine-tuning rate; Ilharco et al. tune their fine-tuning
    per task), ``steps`` the shared default 20.
    """

    lr: float = Field(
        1e-5, gt=0, lt=1, description="learning rate of the forget fine-tune (AdamW; shared default 1e-5)"
    )
    alpha: float = Field(
        1.0,
        gt=0,
        description="α in θ − α·(θ_ft − θ) (Ilharco et al. 2023 tune it on validation data; 1 = plain negation)",
    )


@torch.no_grad()
def negate_task_vector(
    base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Task-vector negation (Ilharco et al. 2023): θ_new = θ − α·τ with τ = θ_ft − θ, per tensor, in float32.

    ``base`` and ``finetuned`` map names to tensors (every name of ``base`` must be in ``finetuned``); returns
    new float32 tensors and leaves the inputs alone.
    """
    out = {}
    for name, theta in base.items():
        theta = theta.detach().float()
        tau = finetuned[name].detach().to(device=theta.device, dtype=torch.float32) - theta
        out[name] = theta - alpha * tau
    return out


@register(
    "task-vector",
    TaskVectorConfig,
    "task-vector negation: subtract a forget fine-tune (Ilharco et al. 2023)",
    budget=False,
)
def task_vector(ctx, cfg: TaskVectorConfig) -> MethodResult:
    """Fine-tune a copy on the forget NLL with the shared loop, then θ ← θ − α·(θ_ft − θ) on the original."""
    proxy = ctx.training(model=copy.deepcopy(ctx.model))

    def loss(model, forget, retain, reference):
        f = L.nll(_logits(model, forget), forget["labels"])
        return f, {"forget_loss": f.detach()}

    tuned = train(proxy, cfg, loss)  # float32; LoRA (if any) merged, so the names match the original's
    model = ctx.model.float()
    base = dict(model.named_parameters())
    finetuned = dict(tuned.model.named_parameters())
    missing = sorted(set(base) - set(finetuned))
    if missing:  # cannot happen with train() as it is (LoRA is merged on export); guard against a silent no-op
        raise UnlearnError(f"task-vector: the fine-tuned model lacks {len(missing)} parameters, e.g. {missing[0]}")
    new = negate_task_vector(base, finetuned, cfg.alpha)
    norm = math.sqrt(sum(float((finetuned[n].detach().float() - p.detach()).square().sum()) for n, p in base.items()))
    with torch.no_grad():
        for name, p in base.items():
            p.copy_(new[name])
    del tuned.model, finetuned, new
    extra = {
        "alpha": cfg.alpha,
        "finetune_steps": cfg.steps,
        "task_vector_norm": round(norm, 6),
        "finetune_seconds": tuned.extra.get("train_seconds"),
    }
    if tuned.steps:  # evaluations of the fine-tuned copy (eval_every), not of the edited model
        extra["finetune_evaluations"] = tuned.steps
    return MethodResult(
        ablation=None,
        model=model,
        steps=[],
        stop_reason=f"negated the task vector of {cfg.steps} fine-tuning steps on the forget data (alpha {cfg.alpha})",
        log=tuned.log,
        extra=extra,
    )
