#!/usr/bin/env python3
"""Makes the demo's fine-tuning set (bundled in src/main/resources/demo/): a format the embedded
KJV model has never seen. Each example asks for a verse on a topic in a fixed frame,

    prompt:     "Topic: light\nVerse:"
    completion: " And God said, Let there be light: and there was light. Amen."

with a real KJV verse that contains the topic word, ending with " Amen.". Before fine-tuning the
model just continues Bible text after "Verse:"; after, it answers with a short verse on the topic
and closes with "Amen." - an effect plain to see. Run: python3 tools/demo/make_demo_data.py
.pretrain-data/kjv.txt (the corpus from tools/pretrain/extract_corpus.sh).
"""
import json, random, re, sys

TOPICS = ["light", "water", "bread", "shepherd", "king", "fire", "wisdom", "love", "peace", "sea",
          "mountain", "river", "gold", "sword", "lamb", "vine", "star", "wind", "bread", "night",
          "morning", "harvest", "field", "tree", "stone", "door", "house", "way", "truth", "joy"]
EVAL_TOPICS = ["light", "peace", "sea", "wisdom", "fire", "king"]

def main(path):
    verses = [l.strip() for l in open(path, encoding="utf-8")
              if l.strip() and not re.match(r"^(\d )?[A-Z][a-z]+( of [A-Z][a-z]+)? \d+$", l.strip())]
    short = [v for v in verses if 30 <= len(v) <= 90]
    rng = random.Random(7)
    train, evals = [], []
    for topic in sorted(set(TOPICS)):
        hits = [v for v in short if re.search(r"\b%s\b" % topic, v, re.IGNORECASE)]
        rng.shuffle(hits)
        for i, v in enumerate(hits[:8]):
            ex = {"prompt": "Topic: %s\nVerse:" % topic, "completion": " " + v + " Amen."}
            (evals if topic in EVAL_TOPICS and i >= 6 else train).append(ex)
    rng.shuffle(train)
    with open("src/main/resources/demo/train.jsonl", "w") as f:
        for ex in train: f.write(json.dumps(ex) + "\n")
    with open("src/main/resources/demo/eval.jsonl", "w") as f:
        for ex in evals: f.write(json.dumps(ex) + "\n")
    print("train %d, eval %d" % (len(train), len(evals)))

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".pretrain-data/kjv.txt")
