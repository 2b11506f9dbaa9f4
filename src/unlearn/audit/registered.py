"""The registered attacks: each turns the loaded audit (models, probes, settings) into result entries."""

from __future__ import annotations
import copy
from ..errors import UnlearnError
from .attacks import logit_lens, quantize_model, relearn
from .probes import Probes
from .base import attack


def _relearn(cfg, probes, model, score, entry, seed, reporter) -> list[dict]:
    out = []
    sets = [("forget", probes["forget"]), ("control", probes.get("control", probes["retain"]))]
    for variant, p in sets:
        if len(p.train.input_ids) == 0:
            raise UnlearnError(
                f"relearning needs {p.which} data outside the evaluation rows, and {p.data.source} has none left: "
                "lower --eval-tokens"
            )
        tuned, log = relearn(
            model,
            p.train,
            steps=cfg.relearn_steps,
            lr=cfg.relearn_lr,
            batch_size=cfg.relearn_batch_size,
            seed=seed,
            reporter=reporter,
        )
        attacked = {w: score(tuned, probes[w].plain, f"relearn {variant}: {w}") for w in ("forget", "retain")}
        del tuned
        out.append(
            entry(
                "relearn",
                variant,
                attacked["forget"],
                retain=attacked["retain"],
                description=f"{cfg.relearn_steps} steps at lr {cfg.relearn_lr:g} on {p.train.n_tokens} tokens of "
                f"{'held-out forget' if variant == 'forget' else 'unrelated (control)'} data ({p.data.source})",
                loss=[round(r["loss"], 4) for r in log],
            )
        )
    return out


def _lens(fp: Probes, model, original, adapter, batch_size, metric, reporter, entry) -> dict:
    per = {}
    for name, m in (("unlearned", model), ("original", original)):
        with reporter.task(f"logit lens: {name}", fp.plain.n_tokens) as advance:
            per[name] = logit_lens(m, adapter, fp.plain, batch_size=batch_size, progress=advance)
    values = [layer[metric] for layer in per["unlearned"]]
    best = max(range(len(values)), key=lambda i: (values[i], i))
    attacked = dict(per["unlearned"][best])
    return entry(
        "logit-lens",
        "best-layer",
        attacked,
        original_attacked=max(layer[metric] for layer in per["original"]),
        description=f"forget tokens read off layer {best + 1} of {len(values)} (the best layer)",
        best_layer=best + 1,
        per_layer={k: [layer[metric] for layer in v] for k, v in per.items()},
        median_rank={k: [layer["median_rank"] for layer in v] for k, v in per.items()},
    )


def _prompt_description(p: Probes, variant: str) -> str:
    from .prompts import QA_PROMPTS, TEXT_PROMPTS

    user, prefix = (TEXT_PROMPTS if p.kind == "text" else QA_PROMPTS)[variant]
    text = user.format(topic=p.topic, question="{question}", paraphrased_question="{paraphrased question}")
    return (text.strip() + (f" ⟶ assistant: {prefix.format(topic=p.topic).strip()}" if prefix else "")).replace(
        "\n", " "
    )


@attack("relearn", "fine-tune on a held-out slice of the forget data (and on the retain data as a control)")
def _relearn_attack(job) -> list[dict]:
    return _relearn(job.cfg, job.probes, job.unlearned.model, job.score, job.entry, job.setup.seed, job.reporter)


@attack("quantize", "round-trip the linear layers' weights through int8 / 4-bit integers (per channel, symmetric)")
def _quantize_attack(job) -> list[dict]:
    cfg, results = job.cfg, []
    for bits in cfg.quant_bits:
        q = copy.deepcopy(job.unlearned.model)
        layers = quantize_model(q, bits, cfg.quant_group_size)
        grouping = f"groups of {cfg.quant_group_size}" if cfg.quant_group_size else "per channel"
        attacked = {w: job.score(q, job.probes[w].plain, f"int{bits}: {w}") for w in ("forget", "retain")}
        del q
        qo = copy.deepcopy(job.orig.model)
        quantize_model(qo, bits, cfg.quant_group_size)
        orig_q = job.score(qo, job.fp.plain, f"int{bits} original: forget")[job.metric]
        del qo
        results.append(
            job.entry(
                "quantize",
                f"int{bits}",
                attacked["forget"],
                retain=attacked["retain"],
                original_attacked=orig_q,
                description=f"weights of {layers} linear layers round-tripped through {bits}-bit integers ({grouping})",
            )
        )
    return results


@attack("logit-lens", "read the forget tokens off every layer's hidden state (final norm + unembedding)")
def _lens_attack(job) -> list[dict]:
    return [
        _lens(
            job.fp,
            job.unlearned.model,
            job.orig.model,
            job.adapter,
            job.setup.batch_size,
            job.metric,
            job.reporter,
            job.entry,
        )
    ]


@attack("prompt", "paraphrased questions, step-by-step, role-play, prefix-injection and affirmative-suffix prompts")
def _prompt_attack(job) -> list[dict]:
    results = []
    for variant in job.fp.prompt_names():
        split = job.fp.prompted(variant)
        results.append(
            job.entry(
                "prompt",
                variant,
                job.score(job.unlearned.model, split, f"prompt {variant}"),
                original_attacked=job.score(job.orig.model, split, f"original {variant}")[job.metric],
                description=_prompt_description(job.fp, variant),
            )
        )
    return results


@attack("in-context", "place forget material (spare chunks, or neighbouring QA records) before each probe")
def _in_context_attack(job) -> list[dict]:
    fp = job.fp
    shots = job.cfg.shots or (1 if fp.kind == "text" else 3)
    split = fp.in_context(shots)
    what = f"{shots} spare forget chunk(s)" if fp.kind == "text" else f"the {shots} nearest forget records"
    return [
        job.entry(
            "in-context",
            f"{shots}-shot",
            job.score(job.unlearned.model, split, "in-context"),
            original_attacked=job.score(job.orig.model, split, "original in-context")[job.metric],
            description=f"{what} placed before each probe",
            shots=shots,
        )
    ]


from . import ablation, oracle, suffix, sweep  # noqa: E402, F401  (the opt-in attacks, registered after these)
