"""Memory of tokenizing one huge text among short ones: stage one cuts texts before tokenizing, so
peak memory is bounded by max length x batch whatever the input (the tokens stay exactly those of
the whole text; tests/encoders/test_tokenize_cut.py proves that).

    python benchmarks/huge_text.py [--huge-mb 50] [--max-length 128] [--pairs [--both-sides]]

Runs two fresh processes side by side, 2,000 short texts with and without one --huge-mb text, each
tokenized 256 at a time with pairscore's tokenize(), and prints each one's wall time and peak RSS
growth (peak RSS minus RSS before tokenizing, with the texts already in memory). With --pairs, the
teacher's tokenizer instead (``CrossEncoder.tokenize``: label_pairs, train_teacher, evaluate) on
2,000 pairs of short texts, the huge text on one side of two of them; with --both-sides also a
second huge text (a little longer) across from it, so that one pair has a huge text on each side
(the default max length, 128, leaves an odd budget of 125 tokens: the case where which text is
longer decides the tokens).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, random, resource, sys, time
sys.path.insert(0, sys.argv[1])
from transformers import AutoTokenizer
from encoders.sources import DEFAULT_ENCODER, resolve_encoder
from encoders.dual_encoder import tokenize
huge_bytes, max_length, pairs, both = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] != "texts", sys.argv[4] == "both"
tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))
if pairs:   # a one-layer teacher around the same tokenizer: only its tokenize() runs
    from transformers import BertConfig, BertForSequenceClassification
    from encoders.teacher import CrossEncoder, TeacherTask
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_labels=1,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512))
    teacher = CrossEncoder(model, tokenizer, TeacherTask("binary", max_length=max_length))
rng = random.Random(0)
words = "the quick brown fox jumps over the lazy dog how do i bake sourdough bread at home".split()
texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)]
if huge_bytes:
    texts[1000] = " ".join(rng.choice(words) for _ in range(huge_bytes // 5))[:huge_bytes]
    if both:    # across from texts[1000] in its batch of 256, reversed (position 232 <-> 23)
        texts[791] = texts[1000] + " and a few more words"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
truncated = 0
for i in range(0, len(texts), 256):
    batch = texts[i:i + 256]
    tokenized = teacher.tokenize(batch[::-1], batch) if pairs else tokenize(tokenizer, batch, max_length)
    truncated += sum(t.truncated for t in tokenized)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - start, "growth_mib": (peak - before) / 1024,
                  "truncated": truncated}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--huge-mb", type=float, default=50.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pairs", action="store_true", help="the teacher's pair tokenizer instead of stage one's")
    parser.add_argument("--both-sides", action="store_true", help="with --pairs: one pair has a huge text on each side")
    args = parser.parse_args()
    if args.both_sides and not args.pairs:
        parser.error("--both-sides is only allowed with --pairs")
    mode = ("both" if args.both_sides else "pairs") if args.pairs else "texts"
    rows = []
    short = "2,000 pairs of short texts" if args.pairs else "2,000 short texts"
    huge = f"+ two {args.huge_mb:g} MB texts in one pair" if args.both_sides else f"+ one {args.huge_mb:g} MB text"
    for label, size in ((short, 0), (huge, int(args.huge_mb * 1e6))):
        done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(size), str(args.max_length), mode],
                              capture_output=True, text=True, check=True)
        rows.append((label, json.loads(done.stdout.strip().splitlines()[-1])))
    kind = "pairs" if args.pairs else "texts"
    print(f"| {kind} (max length {args.max_length}) | tokenize seconds | peak RSS growth | truncated |")
    print("|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['seconds']:.2f} | {r['growth_mib']:.0f} MiB | {r['truncated']} |")


if __name__ == "__main__":
    main()
