"""One training loop for every trained unlearning method, built on Accelerate.

A trained method is a config (``TrainConfig`` plus its own parameters) and a function
``loss(model, forget_batch, retain_batch, reference) -> (loss, logs)``. :func:`train` does the rest: LoRA (peft)
when asked, the frozen reference model when the method needs one, AdamW, warm-up and schedule, gradient
accumulation, clipping, bf16 autocast, periodic evaluation, and merging LoRA back on export. Under
``accelerate launch`` the same loop runs data parallel (DDP, FSDP or DeepSpeed per the accelerate config).

Master weights stay in float32 while training (a bf16 weight cannot hold an update of lr ≈ 1e-5); matrix
products run in bf16 through autocast where the model was loaded in bf16. The trained model stays float32.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnlearnError
from ..models.memory import BF16_TRAINING_THRESHOLD, large_frees_returned, release_freed
from .registry import MethodResult


class TrainConfig(BaseModel):
    """Settings of the shared training loop (every trained method has them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    steps: int = Field(20, ge=1, le=100_000, description="optimizer steps")
    lr: float = Field(1e-5, gt=0, lt=1, description="peak learning rate (AdamW)")
    batch_size: int = Field(4, ge=1, description="forget (and retain) chunks per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="learning-rate schedule")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    eval_every: int = Field(
        0, ge=0, description="evaluate every k steps (0 = only at the end; with a budget, check it every 5 steps)"
    )
    lora: str | None = Field(None, description="train LoRA adapters instead: 'r=16[,alpha=32,dropout=0,targets=a;b]'")
    checkpointing: bool = Field(
        False,
        description="activation checkpointing: keep only each layer's input and recompute its activations in the "
        "backward pass (less memory, about a third more compute)",
    )

    sam_rho: float = Field(
        0.0,
        ge=0,
        lt=10,
        description="sharpness-aware minimisation: each step takes its gradient at the weights moved ρ (L2, all "
        "trained weights) along the normalised gradient, the worst point nearby, so training ends where a small "
        "weight change (a few relearning steps) moves the loss little (Fan et al. 2025; 0 = off; two forward and "
        "backward passes per step; grad_accum 1 only)",
    )

    _lora_syntax = field_validator("lora")(lambda v: lora_spec(v))  # defined below

    @model_validator(mode="after")
    def _sam_alone(self):
        if self.sam_rho and self.grad_accum > 1:
            raise ValueError("sam_rho needs grad_accum 1: raise batch_size instead")
        return self


def lora_spec(spec: str | None) -> str | None:
    """``spec`` unchanged once its syntax is checked (ValueError otherwise): the validator of every LoRA setting."""
    if spec is not None:
        parse_lora(spec)
    return spec


def parse_lora(spec: str) -> dict:
    """``r=16,alpha=32,dropout=0.05,targets=q_proj;v_proj`` → peft LoraConfig arguments."""
    out = {"r": 16, "lora_alpha": None, "lora_dropout": 0.0, "target_modules": "all-linear"}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        try:
            if key == "r":
                out["r"] = int(value)
            elif key == "alpha":
                out["lora_alpha"] = float(value)
            elif key == "dropout":
                out["lora_dropout"] = float(value)
            elif key == "targets":
                out["target_modules"] = [t for t in value.split(";") if t]
            else:
                raise ValueError(f"unknown LoRA setting {key!r} (use r, alpha, dropout, targets)")
        except ValueError as exc:
            raise ValueError(str(exc) if "LoRA" in str(exc) else f"bad LoRA value {item!r}") from None
        if not sep:
            raise ValueError(f"LoRA settings are KEY=VALUE, got {item!r}")
    if out["r"] < 1 or not 0 <= out["lora_dropout"] < 1:
        raise ValueError("LoRA needs r >= 1 and 0 <= dropout < 1")
    out["lora_alpha"] = out["lora_alpha"] or 2 * out["r"]
    return out


def wrap_lora(model, spec: str):
    """The model with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    args = parse_lora(spec)
    targets = args["target_modules"]
    if isinstance(targets, list):  # peft matches a target against the end of each module's dotted name
        modules = dict(model.named_modules())
        for t in targets:
            found = [m for n, m in modules.items() if n == t or n.endswith("." + t)]
            if not found:
                raise UnlearnError(f"LoRA target {t!r} is not a module of this model")
            bad = next((m for m in found if not _is_linear(m)), None)
            if bad is not None:
                raise UnlearnError(f"LoRA target {t!r} is a {type(bad).__name__}, not a linear layer")
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **args))


def _is_linear(module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def batches(split, batch_size: int, seed: int, *, rank: int = 0, world: int = 1):
    """Endless micro-batches of a token split ({input_ids, attention_mask, labels}), reshuffled every pass.

    With ``world`` processes, process ``rank`` gets rows ``rank, rank + world, ...`` of each micro-batch, so the
    processes together see exactly the batches one process would (data parallel with the same global batch).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(split.input_ids)
    if n == 0:
        raise UnlearnError("no training chunks: raise --stats-tokens")
    if batch_size < world:
        raise UnlearnError(f"batch_size {batch_size} is smaller than the {world} processes: raise it")
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size][rank::world]
            if len(idx) == 0:  # the last, short batch of a pass has no row for this process
                idx = order[i : i + 1]
            ids = split.input_ids[idx]
            yield {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": ids.masked_fill(split.special[idx], -100),
            }


def train(
    ctx,
    cfg: TrainConfig,
    loss_fn: Callable,
    *,
    needs_reference: bool = False,
    trainable=None,
    lora_init=None,
    loss_state=None,
    autocast: bool | None = None,
) -> MethodResult:
    """Train ``ctx.model`` with ``loss_fn(model, forget, retain, reference)`` for ``cfg.steps`` optimizer steps.

    ``trainable(model)`` may return the parameters to train (default: all; with LoRA: the adapters);
    ``lora_init(peft_model)`` may initialise the LoRA adapters (FILA); ``loss_state``, state the loss keeps
    across steps (PDU's dual variable), with ``state_dict()`` / ``load_state_dict()``: saved in every checkpoint
    and restored on resume, so a resumed run continues exactly; ``autocast``: bf16 autocast on or off (default:
    on where the model was loaded in bf16). Returns the per-step log (loss terms, learning rate, evaluations)."""
    # --- set-up: float32 master weights, what trains, optimizer and schedule, Accelerate, the batch streams
    model = ctx.model
    bf16 = next(model.parameters()).dtype == torch.bfloat16 if autocast is None else autocast
    cpu = str(next(model.parameters()).device) == "cpu"
    accelerator = _accelerator(cfg.grad_accum, cpu=cpu)
    torch.manual_seed(ctx.seed)
    model = model.float()
    reference = copy.deepcopy(model).eval().requires_grad_(False) if needs_reference else None
    model, params = _trainable(model, cfg, trainable, lora_init)
    optimizer, schedule = _optimizer(params, cfg, cpu)
    # sharded training: an unsharded copy receives the gathered weights for evaluation and export
    sharded = accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")
    template = copy.deepcopy(model).requires_grad_(False) if sharded else None
    # the schedule stays ours: Accelerate would step a prepared one once per process per optimizer step
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = accelerator.prepare_model(reference, evaluation_mode=True)
    shard = {"rank": accelerator.process_index, "world": accelerator.num_processes}
    forget = batches(ctx.forget.stats, cfg.batch_size, ctx.seed, **shard)
    retain = batches(ctx.retain.stats, cfg.batch_size, ctx.seed + 1, **shard) if ctx.retain is not None else None
    run = _Loop(
        accelerator, model, params, optimizer, schedule, template, kept=_snapshot(params) if ctx.budgeted else None
    )
    run.loss_state = loss_state
    if ctx.resumed is not None:  # an interrupted run: its last checkpoint, and the batches it had used
        run.resume(ctx.resumed, (forget, retain), cfg.grad_accum)

    # --- the loop: one optimizer step, its log line, the periodic budget check / evaluation, the checkpoint
    start, stop_reason = time.perf_counter(), f"completed {cfg.steps} steps"
    every = cfg.eval_every or (5 if ctx.budgeted else 0)
    model.train()
    allocator = contextlib.nullcontext()
    if cpu:  # under bf16 autocast: a higher threshold, and the heap trimmed after every step (see there)
        allocator = large_frees_returned(BF16_TRAINING_THRESHOLD) if bf16 else large_frees_returned()
        run.trim = bf16
    with allocator, ctx.reporter.task("training", cfg.steps, unit="steps") as advance:
        advance(run.done)
        for step in range(run.done + 1, cfg.steps + 1):
            terms = run.step(cfg, loss_fn, forget, retain, reference, bf16)
            if not all(map(_finite, terms.values())):
                raise UnlearnError(f"training diverged at step {step} (loss {terms['loss']}): lower lr")
            run.log.append(
                {"step": step, "lr": schedule.get_last_lr()[0], **{k: round(v, 6) for k, v in terms.items()}}
            )
            advance(1)
            if every and step % every == 0 and (step < cfg.steps or ctx.budgeted):
                reason = run.measure(ctx, cfg, step)
                if reason:
                    stop_reason = reason
                    break
            if ctx.save_checkpoint and ctx.checkpoint_every and step % ctx.checkpoint_every == 0 and step < cfg.steps:
                ctx.save_checkpoint(run.state(step))

    # --- export: gathered, LoRA merged, checkpointing off
    model.eval()
    trained = _export(accelerator, model, merge=True, template=template)
    if cfg.checkpointing:
        _set_checkpointing(trained, False)
    extra = {"train_seconds": round(time.perf_counter() - start, 3)}
    return MethodResult(
        ablation=None, steps=run.steps, stop_reason=stop_reason, model=trained, log=run.log, extra=extra
    )


def _trainable(model, cfg: TrainConfig, trainable, lora_init):
    """``model`` (wrapped in LoRA adapters when asked) with only the parameters to train requiring gradients, and
    those parameters."""
    if cfg.checkpointing:
        _set_checkpointing(model, True)
    if cfg.lora:  # peft freezes the base model and trains the adapters
        model = wrap_lora(model, cfg.lora)
        if lora_init is not None:
            lora_init(model)
    elif trainable is not None:
        model.requires_grad_(False)
        for p in trainable(model):
            p.requires_grad_(True)
    else:
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnlearnError("nothing to train: no parameter requires a gradient")
    return model, params


def _optimizer(params, cfg: TrainConfig, cpu: bool):
    """AdamW and its learning-rate schedule."""
    from transformers import get_scheduler

    # on the CPU the fused kernel updates each tensor in one pass: 0.10 s per step against 0.28 s for the
    # per-tensor loop over 133 M float32 parameters (2-core AVX2 CPU), with no parameter-sized temporaries (the
    # foreach path makes them)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False if cpu else None, fused=cpu or None
    )
    schedule = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    return optimizer, schedule


class _Loop:
    """The training loop's moving parts and its progress: the steps done, the per-step log, the evaluation
    records, and the last state that kept within the budget (restored when a later one breaks it)."""

    def __init__(self, accelerator, model, params, optimizer, schedule, template, *, kept):
        self.accelerator, self.model, self.params = accelerator, model, params
        self.optimizer, self.schedule, self.template = optimizer, schedule, template
        self.done, self.log, self.steps, self.kept, self.kept_step = 0, [], [], kept, 0
        self.trim = False  # release the heap's freed memory after every step (bf16 autocast on the CPU)
        self.loss_state = None  # the loss's own state across steps (see train), checkpointed with the rest

    def resume(self, resumed: dict, streams, grad_accum: int) -> None:
        """Continue from a checkpoint written by :meth:`state`, with the batch streams where they were."""
        self.done, self.log, self.steps, self.kept, self.kept_step = (
            resumed[k] for k in ("step", "log", "steps", "kept", "kept_step")
        )
        _restore(self.params, resumed["params"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        self.schedule.load_state_dict(resumed["schedule"])
        torch.set_rng_state(resumed["rng"])
        if self.loss_state is not None:
            self.loss_state.load_state_dict(resumed["loss_state"])
        for _ in range(self.done * grad_accum):  # the same batch order as an uninterrupted run
            for stream in streams:
                if stream is not None:
                    next(stream)

    def step(self, cfg: TrainConfig, loss_fn, forget, retain, reference, bf16: bool) -> dict[str, float]:
        """One optimizer step over ``cfg.grad_accum`` micro-batches; its loss terms averaged over them."""
        accelerator, model = self.accelerator, self.model
        terms: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            with accelerator.accumulate(model), torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bf16):
                fb = {k: v.to(accelerator.device) for k, v in next(forget).items()}
                rb = {k: v.to(accelerator.device) for k, v in next(retain).items()} if retain else None
                moved = self._sharpest(cfg.sam_rho, loss_fn, fb, rb, reference) if cfg.sam_rho else None
                loss, parts = loss_fn(model, fb, rb, reference)
                accelerator.backward(loss)
                if moved is not None:  # the gradient was taken at the moved weights; the step starts from the old ones
                    with torch.no_grad():
                        torch._foreach_sub_(self.params, moved)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                if accelerator.sync_gradients:
                    self.schedule.step()
                self.optimizer.zero_grad()
                if self.trim:
                    release_freed()
            for k, v in {"loss": loss, **parts}.items():  # logged: the mean over processes
                v = accelerator.reduce(v.detach(), "mean") if accelerator.num_processes > 1 else v.detach()
                terms[k] = terms.get(k, 0.0) + float(v) / cfg.grad_accum
        return terms

    def _sharpest(self, rho: float, loss_fn, forget, retain, reference) -> list[torch.Tensor]:
        """SAM's first pass: move the trained weights by ρ·g/‖g‖ (g: this batch's gradient), the direction in which
        the loss rises fastest; returns the offsets. A loss with state across calls (PDU's dual variable) sees
        this pass undone."""
        saved = copy.deepcopy(self.loss_state.state_dict()) if self.loss_state is not None else None
        loss, _ = loss_fn(self.model, forget, retain, reference)
        self.accelerator.backward(loss)
        if saved is not None:
            self.loss_state.load_state_dict(saved)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        moved = torch._foreach_mul(grads, float(rho / (norm + 1e-12)))
        with torch.no_grad():
            torch._foreach_add_(self.params, moved)
        self.optimizer.zero_grad()
        return moved

    def measure(self, ctx, cfg: TrainConfig, step: int) -> str | None:
        """The budget check and evaluation after ``step``; the reason to stop training, if any."""
        self.model.eval()
        record, reason = {"step": step}, None
        if ctx.budgeted:  # budgets are measured on the validation chunks, never on the reported ones
            current = _export(self.accelerator, self.model, template=self.template)
            reason, record["validation"] = ctx.check_budget(model=current)
            if reason and reason.startswith("budget"):
                _restore(self.params, self.kept)
                self.steps.append(record)
                return f"{reason}; restored the state after step {self.kept_step}"
            self.kept, self.kept_step = _snapshot(self.params), step
        if cfg.eval_every:
            current = _export(self.accelerator, self.model, template=self.template)
            record.update(ctx.evaluate(label=f"step {step}", model=current))
        self.steps.append(record)
        if reason:  # the forget target is reached: keep this state
            return reason
        self.model.train()
        return None

    def state(self, step: int) -> dict:
        """What a checkpoint after ``step`` holds to resume exactly."""
        return {
            "step": step,
            "log": self.log,
            "steps": self.steps,
            "kept": self.kept,
            "kept_step": self.kept_step,
            "params": _snapshot(self.params),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": torch.get_rng_state(),
            "loss_state": self.loss_state.state_dict() if self.loss_state is not None else None,
        }


def fine_tune(model, split, cfg: TrainConfig, *, seed: int, reporter, trainable=None, autocast=None) -> MethodResult:
    """Plain next-token fine-tuning of ``model`` (in place) on the scored tokens of ``split`` with :func:`train`:
    what ``unlearn learn`` and the audit's relearning attack do (``trainable`` and ``autocast``: see there)."""
    from .context import Training, TrainingData

    ctx = Training(model=model, forget=TrainingData(split), retain=None, seed=seed, reporter=reporter)
    return train(ctx, cfg, next_token_loss, trainable=trainable, autocast=autocast)


def next_token_loss(model, batch, _retain=None, _reference=None):
    """The next-token NLL of ``batch`` as a :func:`train` loss (:func:`fine_tune`'s, the oracle's, healing's): the
    logits are this loss's alone, so their gradient is written over them (``overwrite``)."""
    from . import losses

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return losses.nll(logits, batch["labels"], overwrite=True), {}


def _accelerator(grad_accum: int, cpu: bool):
    """An Accelerator for one training run. Precision is ours (bf16 autocast where the model was loaded in bf16),
    so runs with different dtypes can follow each other in one process; Accelerate's process-wide state is
    reset if an earlier run set it up differently (e.g. on another device)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision="no", gradient_accumulation_steps=grad_accum, cpu=cpu)
    except ValueError:
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision="no", gradient_accumulation_steps=grad_accum, cpu=cpu)


def _set_checkpointing(model, on: bool) -> None:
    """Turn transformers' activation checkpointing on (non-reentrant) or off."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UnlearnError(f"{type(model).__name__} does not support activation checkpointing: drop checkpointing")
    new = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5.x; the older names warn there
    if on and new:
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif new:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params, saved) -> None:
    for p, s in zip(params, saved):
        p.copy_(s)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _export(accelerator, model, merge: bool = False, template=None):
    """The plain model (unwrapped; LoRA merged when ``merge``, else evaluated with its adapters active).

    Sharded training (FSDP, DeepSpeed) leaves each process a shard: ``template`` (an unsharded copy of the
    model made before sharding) receives the full weights, gathered by Accelerate and sent to every process."""
    if template is not None:
        state = [accelerator.get_state_dict(model) if accelerator.is_main_process else None]
        torch.distributed.broadcast_object_list(state, src=0)
        template.load_state_dict(state[0])
        model = template
    model = accelerator.unwrap_model(model)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model
