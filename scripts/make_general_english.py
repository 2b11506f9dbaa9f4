"""Write the built-in ``general-english`` corpus: prose the bundled model writes about many everyday subjects.

Why: the default retain corpus must cover English as a whole (not one narrow register), ship with the package
(the default run may not need ``../shared`` nor download anything) and carry no licence trouble. Text that
SmolLM2-135M-Instruct (Apache-2.0) writes itself, from prompts listed here, on many subjects and in many forms
(encyclopedia entries, news reports, stories, letters, dialogues, verse, explanations), is all three; and
retaining it keeps the model's own distribution over ordinary English. Nothing here is code: no prompt asks
for programming, and answers with code in them are dropped.

Every prompt belongs to one of two disjoint halves, chosen by subject: ``train`` (retain statistics and
healing) and ``heldout`` (the run's *utility* row: general English that no step of a method sees).

    python scripts/make_general_english.py            # writes src/unlearn/data/general_english.jsonl.gz

Deterministic for a given torch build and seed (sampling with a fixed generator); ~10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from pathlib import Path

import torch

SUBJECTS = [
    # nature and science
    "owls",
    "volcanoes",
    "the water cycle",
    "honeybees",
    "the Moon",
    "coral reefs",
    "thunderstorms",
    "glaciers",
    "the human heart",
    "photosynthesis",
    "earthquakes",
    "whales",
    "deserts",
    "rainforests",
    "comets",
    "the immune system",
    "migrating birds",
    "mushrooms",
    "tides",
    "dinosaurs",
    "sleep",
    "rivers",
    "wolves",
    "the seasons",
    "octopuses",
    "vaccines",
    "rainbows",
    "ants",
    "the planet Mars",
    "trees in autumn",
    # history and society
    "the Roman Empire",
    "ancient Egypt",
    "the printing press",
    "the Silk Road",
    "medieval castles",
    "the Industrial Revolution",
    "the first airplanes",
    "the history of tea",
    "Viking sailors",
    "the invention of the telephone",
    "the Olympic Games",
    "a town election",
    "public libraries",
    "the history of money",
    "lighthouses",
    "the age of exploration",
    "trade unions",
    "the Great Wall of China",
    # everyday life
    "baking bread",
    "a rainy Sunday",
    "learning to ride a bicycle",
    "a village market",
    "moving to a new city",
    "growing tomatoes",
    "a family dinner",
    "the first day of school",
    "a train journey",
    "saving money",
    "keeping a garden",
    "a visit to the dentist",
    "winter holidays",
    "cooking soup",
    "walking a dog",
    "a birthday party",
    "cleaning the house",
    "a long flight",
    "making friends",
    "a job interview",
    # arts, sport and culture
    "jazz music",
    "a football match",
    "painting with watercolours",
    "the theatre",
    "a famous novel",
    "folk tales",
    "learning the piano",
    "chess tournaments",
    "a marathon",
    "photography",
    "opera",
    "a film festival",
    "poetry",
    "dance",
    "museums",
    "knitting",
    "a tennis final",
    "street food",
    # work, places and ideas
    "farming",
    "a hospital night shift",
    "a fishing boat",
    "a small bakery",
    "city traffic",
    "a mountain village",
    "an island",
    "a bridge",
    "friendship",
    "honesty",
    "courage",
    "kindness",
    "the value of education",
    "a news report about a flood",
    "a local hero",
    "a lost cat",
    "a king and his advisers",
    "a storm at sea",
    "a quiet forest",
    "an old lighthouse keeper",
    "a crowded harbour",
    "a summer fair",
]

FORMS = [
    "Write an encyclopedia article about {s}.",
    "Write a short news report about {s}.",
    "Write a short story about {s}.",
    "Explain {s} to a curious teenager.",
    "Write a letter to a friend about {s}.",
    "Write a dialogue between two people talking about {s}.",
    "Write a poem about {s}.",
    "Describe {s} in vivid detail.",
]

_CODE = re.compile(r"```|^\s*(def |class |import |from \w+ import|#include|\$ )|[{};]\s*$", re.M)


def prompts() -> list[dict]:
    """Every subject in every form; subjects alternate between the train and held-out halves."""
    out = []
    for i, subject in enumerate(SUBJECTS):
        part = "heldout" if i % 5 == 4 else "train"
        for k in range(3):  # three of the forms per subject, rotating: every form about equally often
            form = FORMS[(i + 3 * k) % len(FORMS)]
            out.append({"prompt": form.format(s=subject), "subject": subject, "part": part})
    return out


def clean(text: str) -> str | None:
    text = text.replace("\r", "").strip()
    if _CODE.search(text) or len(text.split()) < 40:
        return None
    return re.sub(r"\n{3,}", "\n\n", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "src/unlearn/data/general_english.jsonl.gz"))
    ap.add_argument("--batch-size", type=int, default=54)
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from unlearn.models.load import load_model

    loaded = load_model("smollm2-135m", dtype="fp32", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    tok.padding_side = "left"
    items = prompts()
    torch.manual_seed(args.seed)
    records, start = [], time.perf_counter()
    for b in range(0, len(items), args.batch_size):
        batch = items[b : b + args.batch_size]
        chats = [
            tok.apply_chat_template(
                [{"role": "user", "content": it["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            for it in batch
        ]
        enc = tok(chats, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                repetition_penalty=1.15,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        for it, ids in zip(batch, out[:, enc["input_ids"].shape[1] :]):
            text = clean(tok.decode(ids, skip_special_tokens=True))
            if text:
                records.append({**it, "text": text})
        print(
            f"{b + len(batch)}/{len(items)} prompts, {len(records)} kept, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    with gzip.GzipFile(args.out, "wb", compresslevel=9, mtime=0) as f:  # mtime 0: the same bytes every time
        f.write(text.encode("utf-8"))
    print(f"wrote {len(records)} texts to {args.out}")


if __name__ == "__main__":
    main()
