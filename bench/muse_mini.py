"""MUSE-mini: the MUSE-News protocol scaled to a CPU: learn news into SmolLM2-135M, unlearn it, score with MUSE.

Prints one JSON object (settings, data sizes, learn facts, timings, one row per model) on stdout and a Markdown
table on stderr; reads MUSE-News by path (``--muse``) and writes only into ``--work``.

1. **Corpora**, every record exactly ``--seq-len`` tokens with the separator the text corpus puts before it (text
   corpora pack shuffled records: so every chunk is one whole record). Forget: the ``--verbmem`` VerbMem items
   (the prompt's last ``seq_len - 1 - verbmem_tokens`` tokens + the first ``--verbmem-tokens`` of the true
   continuation); the ``raw/forget.jsonl`` passages that KnowMem forget questions ask about (a window around the
   answer where it occurs with ``--match`` of the question's content words near it: most questions are about
   articles outside the 150 stored, so few match); the ``--knowmem`` forget QA as text in MUSE's
   ``Question: ...\\nAnswer: ...`` format, packed whole into records. Retain: the retain2 QA the same way, the
   ``privleak/retain2.jsonl`` passages they ask about, and windows of ``--retain-texts`` retain2 texts.
2. **Target** = ``unlearn.learn`` (text, loss on every token) on forget + retain; **reference** = on retain only.
3. **Rows**: reference, target, then each of ``--methods`` run by ``unlearn.run`` on the target (forget / retain =
   the files above, next-token metrics on the same files; budgets of ``METHOD_CONFIGS``), its run folder's model
   scored as ``unlearn.load_model`` loads it: a ``policy.json`` (guard, icul, alu) is attached, so generation is
   under the policy. Suite ``muse``: VerbMem ROUGE-L F1, KnowMem forget / retain ROUGE-L F1 (MUSE's few-shot
   prompts, ``knowmem/*_icl.jsonl``), PrivLeak (Min-K 40 % AUC, forget news records vs as many same-length
   ``privleak/holdout.jsonl`` windows, relative to the reference's). A failing method gets ``{"error": ...}``.
4. **Generation overhead**: greedy generation of exactly ``--gen-tokens`` tokens on the VerbMem prompts, batch 1
   (the first ``--gen-b1`` prompts one by one) and 16, run folder's model vs plain target in turn, best of
   ``--gen-repeats``: tokens/s and ratio = run / target seconds.

``--resume`` reuses a work folder with the same settings (learnt models, run folders, evaluated suite parts):
    flock /tmp/heavy.lock python bench/muse_mini.py --quick --methods guard,npo --work /tmp/muse_quick
    flock /tmp/heavy.lock python bench/muse_mini.py --work /tmp/muse_full > muse.json 2> muse.log
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model needs no network (set before transformers loads)

import torch  # noqa: E402

import unlearn  # noqa: E402
from tofu_mini import fail, log, prepare_work, read_jsonl, write_jsonl  # noqa: E402 - this folder's helpers
from unlearn.api import learn  # noqa: E402
from unlearn.models import components  # noqa: E402
from unlearn.models.load import cpu_level, load_model, resolve_source  # noqa: E402

DEFAULT_MUSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "muse_news"
DEFAULT_METHODS = "guard,icul,alu,npo,ga"
ALIASES = {"ga": "gradient-ascent"}
# Sized for ~4-5 min of learning on 2 cores (~290 tokens/s): the defaults make 45 forget and 34 retain records of
# 128 tokens, so (target 79 + reference 34 records) x 128 tokens x 5 epochs = 72k token-epochs.
DEFAULTS = dict(verbmem=25, knowmem=50, retain_texts=16, seq_len=128, verbmem_tokens=64, epochs=5.0, lr=2e-4)
DEFAULTS.update(batch_size=8, knowmem_tokens=32, eval_batch_size=16, gen_tokens=32, gen_b1=4, gen_repeats=2)
QUICK = {**DEFAULTS, "verbmem": 3, "knowmem": 6, "retain_texts": 2, "verbmem_tokens": 32, "epochs": 1.0}
QUICK.update(knowmem_tokens=8, gen_tokens=8, gen_b1=2, gen_repeats=1)
TRAINED = {"steps": 20, "batch_size": 4}  # as bench/tofu_mini.py: two passes over ~40 forget records
METHOD_CONFIGS = {m: {**TRAINED, "lr": 2e-5} for m in ("gradient-ascent", "graddiff")}  # they diverge fast
METHOD_CONFIGS.update({m: {**TRAINED, "lr": 5e-5} for m in ("npo", "simnpo")})  # bounded losses
QUICK_METHOD = {"steps": 2}
ICL = (("forget", "forget"), ("retain", "retain2"))  # (KnowMem part, MUSE file prefix) of the few-shot examples
STOP = set("the a an of in on at to for and or is was were be by with what which who how did does do that".split())


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def exact(tok, make, hi: int, n: int) -> tuple[int, str] | None:
    """(c, make(c)) for the largest c <= hi whose text tokenises to exactly n tokens, ``make(c)`` growing with c
    (a cut at a character: a cut at a token can re-tokenise one longer or shorter); None if there is none."""
    lo = 1
    while lo < hi:  # the largest c with at most n tokens
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(enc(tok, make(mid))) <= n else (lo, mid - 1)
    for c in range(lo, max(0, lo - 32), -1):
        text = make(c)
        if "\ufffd" not in text and len(enc(tok, text)) == n:
            return c, text
    return None


def gap(prompt: str, gt: str, raw: list[str]) -> str:
    """The whitespace between a VerbMem prompt and its continuation (MUSE strips it): as in the raw article
    where it is among ``raw``, else a space between two word characters."""
    for doc in raw:
        at = doc.find(prompt[-60:])
        cont = doc[at + len(prompt[-60:]) :][:40] if at >= 0 else ""
        if 0 <= cont.find(gt[:20]) <= 3:
            return cont[: cont.find(gt[:20])]
    return " " if prompt[-1:].isalnum() and gt[:1].isalnum() else ""


def verbmem_records(tok, items: list[dict], raw: list[str], n: int, g: int) -> tuple[list[str], list[dict]]:
    """Training texts (prompt tail + continuation head, n tokens) and the VerbMem items (prompt tail, head)."""
    texts, evals = [], []
    for it in items:
        p, head = it["prompt"], gap(it["prompt"], it["gt"], raw) + tok.decode(enc(tok, it["gt"])[:g])
        fit = exact(tok, lambda c, p=p, head=head: p[-c:] + head, len(p), n)
        if fit is None:
            log(f"verbmem: no {n}-token cut of an item, left out")
            continue
        texts.append(fit[1])
        evals.append({"prompt": p[-fit[0] :], "gt": head.lstrip()})
    return texts, evals


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9£$%]+", text.lower()) if len(w) > 2 and w not in STOP}


def find_passages(qa: list[dict], docs: list[str], min_overlap: float) -> list[tuple[int, int]]:
    """(document, character) of each answer that occurs in ``docs`` with at least ``min_overlap`` of its
    question's content words within 400 characters; the best place per question, one per place."""
    found = set()
    for r in qa:
        best, qw = None, words(r["question"])
        for d, doc in enumerate(docs):
            for m in re.finditer(re.escape(r["answer"].lower()), doc.lower()):
                overlap = len(qw & words(doc[max(0, m.start() - 400) : m.end() + 400])) / max(1, len(qw))
                if overlap >= min_overlap and (best is None or overlap > best[0]):
                    best = (overlap, d, m.start())
        if best:
            found.add(best[1:])
    return sorted(found)


def windows(tok, texts: list[str], count: int, n: int) -> list[str]:
    """Up to ``count`` consecutive n-token windows of ``texts``, round robin: each text's first, then second..."""
    out, at = [], [0] * len(texts)
    while len(out) < count and any(a is not None for a in at):
        for i, text in enumerate(texts):
            if at[i] is None or len(out) >= count:
                continue
            rest = text[at[i] :]
            fit = exact(tok, lambda c, rest=rest: rest[:c], min(len(rest), 16 * n), n)
            if fit:
                out.append(fit[1])
            # no fit (the text ends, or a cut jumps over n tokens): a few characters on, or the text is done
            at[i] = at[i] + (fit[0] if fit else 7) if len(rest) > 8 * n else None
    return out


def passages(tok, docs: list[str], hits: list[tuple[int, int]], n: int) -> list[str]:
    """An n-token window of each hit's document starting ~300 characters before the answer (at a word start)."""
    found = [windows(tok, [docs[d][docs[d].rfind(" ", 0, max(0, pos - 300)) + 1 :]], 1, n) for d, pos in hits]
    return list(dict.fromkeys(w[0] for w in found if w))


def qa_packs(tok, qa: list[dict], n: int) -> list[str]:
    """The QA in MUSE's plain format packed whole into n-token records, each topped up with the start of the
    QA that follow (so every QA is once whole in a record)."""
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in qa]
    out, i = [], 0
    while i < len(texts):
        j = i + 1
        while j < len(texts) and len(enc(tok, "".join(texts[i : j + 1]))) <= n - 4:
            j += 1
        head, fillers, fit = "".join(texts[i:j]), texts[j:] + texts * 2, None
        for off in range(len(texts)):  # a filler that reaches exactly n tokens (a cut can jump over n)
            rest = "".join(fillers[off:])
            fit = exact(tok, lambda c, head=head, rest=rest: head + rest[:c], min(len(rest), 16 * n), n)
            if fit:
                break
        if fit is None:
            fail(f"cannot pack QA {i}..{j - 1} into {n} tokens: raise --seq-len")
        out.append(fit[1])
        i = j
    return out


def build_data(args, tok) -> dict:
    """Training texts, the suite's parts and facts about the matching (see the module's docstring)."""
    if not (args.muse / "verbmem" / "forget.jsonl").is_file():
        fail(f"MUSE-News not found in {args.muse} (set --muse)")
    texts = lambda f: [r["text"] for r in read_jsonl(args.muse / f)]  # noqa: E731
    n = args.seq_len - 1  # the separator (EOS) the text corpus puts before every record
    if not 8 <= args.verbmem_tokens <= n - 16:
        fail(f"--verbmem-tokens must be 8..{n - 16} (seq_len - 17)")
    raw, retain2, holdout = texts("raw/forget.jsonl"), texts("privleak/retain2.jsonl"), texts("privleak/holdout.jsonl")
    kf = read_jsonl(args.muse / "knowmem" / "forget_qa.jsonl")[: args.knowmem]
    kr = read_jsonl(args.muse / "knowmem" / "retain2_qa.jsonl")[: args.knowmem]
    vm_items = read_jsonl(args.muse / "verbmem" / "forget.jsonl")[: args.verbmem]
    vm_texts, vm_eval = verbmem_records(tok, vm_items, raw, n, args.verbmem_tokens)
    hits_f, hits_r = find_passages(kf, raw, args.match), find_passages(kr, retain2, args.match)
    pf, pr = passages(tok, raw, hits_f, n), passages(tok, retain2, hits_r, n)
    qf, qr = qa_packs(tok, kf, n), qa_packs(tok, kr, n)
    rt = windows(tok, retain2, args.retain_texts, n)
    forget, retain = vm_texts + pf + qf, qr + pr + rt
    news = vm_texts + pf  # PrivLeak's members: the forget news text (the QA packs' format alone would tell them apart)
    hold = windows(tok, holdout, len(news), n)
    if len(hold) < len(news):
        fail(f"only {len(hold)} holdout windows for {len(news)} forget news records: lower --verbmem")
    parts = dict(verbmem=vm_eval, knowmem_forget=kf, knowmem_retain=kr)
    parts.update(privleak_forget=[{"text": t} for t in news], privleak_holdout=[{"text": t} for t in hold])
    sizes = {"forget": dict(records=len(forget), verbmem=len(vm_texts), passages=len(pf), qa_packs=len(qf))}
    sizes["retain"] = dict(records=len(retain), qa_packs=len(qr), passages=len(pr), retain2_texts=len(rt))
    sizes.update(knowmem_qa={"forget": len(kf), "retain": len(kr)}, holdout_windows=len(hold))
    sizes.update(matched_questions={"forget": len(hits_f), "retain": len(hits_r)}, record_tokens=args.seq_len)
    train = {"forget": forget, "retain": retain, "all": forget + retain}
    return {"train": train, "eval": parts, "sizes": sizes}


def learned(model: str, data: str, rows: int, out: Path, args) -> dict:
    """Fine-tune on ``rows`` records of text (or reuse a finished ``out``); a summary of learn.json."""
    reused, label = (out / "learn.json").is_file(), out.name
    if reused:
        log(f"{label}: reusing {out}")
        record = json.loads((out / "learn.json").read_text(encoding="utf-8"))
    else:
        log(f"{label}: learning {rows} records of {data} -> {out}")
        settings = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len)
        settings.update(dtype=args.dtype, device=args.device)
        record = learn(model, data, out, format="text", tokens=rows * args.seq_len, seed=args.seed, **settings)
    losses = [e["loss"] for e in record["log"]]
    k = max(1, min(5, len(losses) // 4))
    rows = record["data"]["rows"]
    out_ = dict(rows=rows, steps=len(losses), token_epochs=round(rows * args.seq_len * args.epochs))
    out_.update(loss_first=round(sum(losses[:k]) / k, 4), loss_last=round(sum(losses[-k:]) / k, 4))  # mean of k
    out_.update(train_s=record["timings_s"]["train"], time_s=record["timings_s"]["total"], reused=reused)
    log(f"{label}: {out_}")
    return out_


def muse_eval(model: str, data: list[str], out: Path, args, reference: str | None, label: str, loaded=None):
    log(f"{label}: MUSE evaluation of {model}")
    start = time.perf_counter()
    settings = {"verbmem_new_tokens": args.verbmem_tokens, "knowmem_new_tokens": args.knowmem_tokens}
    where = dict(batch_size=args.eval_batch_size, dtype=args.dtype, device=args.device)
    where.update(settings=settings, reference=reference, out=out, loaded=loaded)
    result = unlearn.evaluate_suite(model, "muse", data, **where)
    seconds = time.perf_counter() - start
    log(f"{label}: evaluated in {seconds:.0f} s (reused parts: {result['reused'] or 'none'})")
    return result, seconds


def row_of(result: dict, time_s: float | None, eval_s: float) -> dict:
    s, r4 = result["summary"], (lambda x: None if x is None else round(x, 4))
    pl = s.get("privleak") or {}
    row = {k: r4(s[k]["rougeL_f1"]) for k in ("verbmem", "knowmem_forget", "knowmem_retain")}
    row = {"verbmem_rouge": row.pop("verbmem"), **row, "privleak": pl.get("privleak"), "auc_muse": pl.get("auc_muse")}
    row["privleak"] = None if row["privleak"] is None else round(row["privleak"], 2)
    row.update(auc_muse=r4(row["auc_muse"]), time_s=time_s and round(time_s, 1), eval_s=round(eval_s, 1))
    return {**row, "results": result["path"]}


def run_method(name: str, cfg: dict, files: dict, eval_data: list[str], ref_json: str, work: Path, args, gen) -> dict:
    run_dir = work / "runs" / name
    if (run_dir / "manifest.json").is_file():
        log(f"{name}: reusing {run_dir}")
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        log(f"{name}: unlearning with {ALIASES.get(name, name)} {cfg}")
        tokens = min(files["forget_rows"], files["retain_rows"]) * args.seq_len
        data = lambda f: {"source": f, "format": "text", "eval_source": f}  # noqa: E731 - metrics on the same text
        config = dict(model=files["target"], dtype=args.dtype, device=args.device, seq_len=args.seq_len, name=name)
        config.update(forget=data(files["forget"]), retain=data(files["retain"]), method=ALIASES.get(name, name))
        # every record for statistics / training (methods that train longer draw more chunks of the same files)
        config.update(method_config=cfg, stats_tokens=tokens, eval_tokens=tokens, val_tokens=0, seed=args.seed)
        result = unlearn.run({**config, "batch_size": args.batch_size, "out_dir": str(work / "runs")})
        manifest, metrics = result.manifest, result.metrics
    policy = run_dir / "model" / "policy.json"
    loaded = load_model(str(run_dir / "model"), args.dtype, args.device, log=log)  # as unlearn.load_model does
    attached = [c.file for c in components.attached(loaded.model)]
    if policy.is_file() and "policy.json" not in attached:
        raise RuntimeError(f"{policy} was not attached on loading: the row would not be scored under the policy")
    result, eval_s = muse_eval(str(run_dir / "model"), eval_data, run_dir, args, ref_json, name, loaded)
    row = {**row_of(result, manifest["timings_s"]["total"], eval_s), "attached": attached}
    for which in ("forget", "retain"):
        drop = ((metrics.get("after") or {}).get(f"{which}_drop") or {}).get("top1")
        row[f"{which}_top1_drop"] = None if drop is None else round(drop, 4)
    row["policy"] = json.loads(policy.read_text(encoding="utf-8")).get("kind") if policy.is_file() else None
    log(f"{name}: timing generation")
    try:
        row.update(gen_overhead(*gen, loaded.model, args))
    except Exception as exc:  # noqa: BLE001 - the quality row stands without its timing
        traceback.print_exc(file=sys.stderr)
        row["gen_error"] = f"{type(exc).__name__}: {exc}"
    return row


@torch.inference_mode()
def _seconds(model, batch: dict, new: int, pad: int) -> float:
    start = time.perf_counter()
    model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
    return time.perf_counter() - start


def gen_overhead(plain, tok, prompts: list[str], model, args) -> dict:
    """Tokens/s of greedy generation, run folder's model vs plain target, batch 1 and 16, best of repeats."""
    tok.padding_side = "left"
    cases = {"b1": [[p] for p in prompts[: args.gen_b1]], "b16": [prompts[:16]]}
    out: dict = {}
    for case, batches in cases.items():
        best = {"target": float("inf"), "run": float("inf")}
        enc_ = [tok(b, return_tensors="pt", padding=True).to(plain.device) for b in batches]
        for m in (plain, model):  # untimed: a first pass of a shape pays one-off setup
            _seconds(m, enc_[0], 2, tok.pad_token_id)
        for _ in range(args.gen_repeats):
            for key, m in (("target", plain), ("run", model)):
                best[key] = min(best[key], sum(_seconds(m, e, args.gen_tokens, tok.pad_token_id) for e in enc_))
        n_tok = sum(len(b) for b in batches) * args.gen_tokens
        out[f"gen_{case}_tokens_per_s"] = {k: round(n_tok / s, 1) for k, s in best.items()}
        out[f"gen_{case}_ratio"] = round(best["run"] / best["target"], 3)
    return out


def table(rows: dict) -> str:
    cols = [("verbmem_rouge", "VerbMem ↓"), ("knowmem_forget", "KnowMem forget ↓"), ("privleak", "PrivLeak (→0)")]
    cols += [("knowmem_retain", "KnowMem retain ↑"), ("forget_top1_drop", "forget top-1 drop")]
    cols += [("retain_top1_drop", "retain top-1 drop"), ("time_s", "time (s)")]
    cols += [("gen_b1_ratio", "gen time ratio b1"), ("gen_b16_ratio", "gen time ratio b16")]
    fmt = lambda c, v: "–" if v is None else f"{v:.0f}" if c == "time_s" else f"{v:.4g}"  # noqa: E731
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [fmt(c, r.get(c)) for c, _ in cols] if "error" not in r else [f"error: {r['error'][:100]}"]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (len(cols) - len(cells))) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--muse", type=Path, default=DEFAULT_MUSE, help="MUSE-News folder (read, never copied)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "muse_mini", help="work folder")
    ap.add_argument("--resume", action="store_true", help="reuse finished pieces of an existing --work folder")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", help=f"comma-separated methods (default {DEFAULT_METHODS}: those registered)")
    ap.add_argument("--method-config", default="{}", help='JSON of per-method overrides, e.g. {"npo": {"lr": 1e-5}}')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--match", type=float, default=0.5, help="question words near an answer for a passage match")
    for key, value in DEFAULTS.items():
        kind = float if isinstance(value, float) else int
        ap.add_argument(f"--{key.replace('_', '-')}", type=kind, help=f"default {value} (--quick: {QUICK[key]})")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def choose_methods(args) -> tuple[list[str], list[str], dict]:
    """(methods to run, default methods not registered and skipped, each one's config); unknown names fail."""
    try:
        extra = json.loads(args.method_config)
        assert isinstance(extra, dict) and all(isinstance(v, dict) for v in extra.values())
    except (ValueError, AssertionError):
        fail('--method-config must be a JSON object of objects, e.g. {"npo": {"lr": 1e-5}}')
    registered = unlearn.methods()
    wanted = [m.strip() for m in (args.methods or DEFAULT_METHODS).split(",") if m.strip()]
    known = [m for m in wanted if ALIASES.get(m, m) in registered]
    skipped = [m for m in wanted if m not in known]
    unknown = skipped if args.methods else []
    unknown += [m for m in extra if ALIASES.get(m, m) not in registered]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}: use {', '.join([*registered, *ALIASES])}")
    if skipped:
        log(f"not registered, skipped: {', '.join(skipped)}")
    configs = {m: {**METHOD_CONFIGS.get(ALIASES.get(m, m), {}), **extra.get(m, {})} for m in known}
    for m in known:  # --quick: the fewest steps of a trained method (alu's steps are pipeline stages)
        steps = registered[ALIASES.get(m, m)]["parameters"].get("steps", {}).get("default")
        if args.quick and isinstance(steps, int) and not isinstance(steps, bool):
            configs[m] = {**configs[m], **QUICK_METHOD, **extra.get(m, {})}
    return known, skipped, configs


def methods_rows(names, configs, files, eval_data, ref_json, work, args, timings) -> dict:
    rows: dict = {}
    plain, tok = unlearn.load_model(files["target"], dtype=args.dtype, device=args.device, log=log)
    gen = (plain, tok, [r["prompt"] for r in read_jsonl(work / "eval" / "verbmem.jsonl")])
    for name in names:
        start = time.perf_counter()
        try:
            rows[name] = run_method(name, configs[name], files, eval_data, ref_json, work, args, gen)
        except Exception as exc:  # noqa: BLE001 - one method failing must not stop the others
            traceback.print_exc(file=sys.stderr)
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"{name}: {rows[name]}")
    return rows


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    names, skipped, configs = choose_methods(args)
    from transformers import AutoTokenizer

    data = build_data(args, AutoTokenizer.from_pretrained(resolve_source(args.model, log)))
    keys = ["model", "muse", "quick", "seed", "match", *DEFAULTS, "dtype", "device"]
    settings = {k: str(getattr(args, k)) if k == "muse" else getattr(args, k) for k in keys}
    settings["method_configs"] = configs
    work = prepare_work(args, settings)
    files = {k: write_jsonl(work / f"{k}.jsonl", [{"text": t} for t in v]) for k, v in data["train"].items()}
    files.update(forget_rows=len(data["train"]["forget"]), retain_rows=len(data["train"]["retain"]))
    eval_data = [f"{p}={write_jsonl(work / 'eval' / f'{p}.jsonl', v)}" for p, v in data["eval"].items()]
    eval_data += [f"knowmem_{w}_icl={args.muse / 'knowmem' / f'{q}_qa_icl.jsonl'}" for w, q in ICL]
    log(f"data: {json.dumps(data['sizes'])}")

    timings: dict = {}
    learn_info = {"target": learned(args.model, files["all"], len(data["train"]["all"]), work / "target", args)}
    learn_info["reference"] = learned(args.model, files["retain"], files["retain_rows"], work / "reference", args)
    files["target"] = str(work / "target")
    timings.update(learn_target=learn_info["target"]["time_s"], learn_reference=learn_info["reference"]["time_s"])
    ref_result, ref_s = muse_eval(str(work / "reference"), eval_data, work / "reference_eval", args, None, "reference")
    rows = {"reference": row_of(ref_result, learn_info["reference"]["time_s"], ref_s)}
    rows["reference"]["privleak"] = 0.0  # against itself, by definition
    tgt_result, tgt_s = muse_eval(files["target"], eval_data, work / "target_eval", args, ref_result["path"], "target")
    rows["target"] = row_of(tgt_result, learn_info["target"]["time_s"], tgt_s)
    timings.update(eval_reference=round(ref_s, 1), eval_target=round(tgt_s, 1))
    rows.update(methods_rows(names, configs, files, eval_data, ref_result["path"], work, args, timings))
    timings["total"] = round(time.perf_counter() - t0, 1)

    print(table(rows), file=sys.stderr)
    record = dict(settings=settings, data={**data["sizes"], "work": str(work)}, learn=learn_info)
    record.update(methods={"run": names, "skipped_unregistered": skipped}, timings_s=timings, rows=rows)
    record.update(cpu_level=cpu_level(), threads=torch.get_num_threads(), cpu_count=os.cpu_count())
    record.update(processor=platform.processor() or platform.machine(), unlearn_version=unlearn.__version__)
    print(json.dumps(record, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
