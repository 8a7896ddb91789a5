#!/usr/bin/env python3
"""Proves that peft loads the adapters qlora4j saves, and computes what qlora4j computed.

--ours is a folder of adapters written by qlora4j: one subfolder per adapter (named like the
peft golden cases, e.g. lora-llama/), or a single adapter folder. Each holds

  adapter_config.json             as qlora4j wrote it
  adapter_model.safetensors       as qlora4j wrote it
  expected.json                   {"base": "llama-f32", "input_ids": [...],
                                   "logits_file": "expected_logits.safetensors"}
  expected_logits.safetensors     qlora4j's logits under the key "logits", [T, vocab]
                                  (or [1, T, vocab]) float32

For each one: the base model --models-dir/<base> is loaded in float32 (CPU, eager attention),
PeftModel.from_pretrained(base, folder) loads the adapter, the logits of input_ids (mask of
ones) are computed and compared with qlora4j's. Also checked: peft reports no missing adapter
keys, and every tensor of the file is taken by the model unchanged (same keys, shapes and
values as peft's own state-dict view of the loaded adapter). A table is printed; the exit
status is 1 when any adapter fails (max |ours - peft| / max |peft| above --tol, 1e-4 by
default, or a key problem), 2 when --ours holds no adapter.

Prompt-learning adapters (PREFIX_TUNING, PROMPT_TUNING) are checked the same way: peft
loads prompt_embeddings into its PrefixEncoder / PromptEmbedding (for prefix_projection=True
in inference mode, the saved table directly, as peft's own saves work), and the logits are
compared. For prompt tuning, peft returns rows for the V virtual tokens too: qlora4j writes
all V+T rows (PromptTuning.logits); T rows are compared with peft's last T. Prompt-learning
adapters are also loaded a second time with is_trainable=True where peft can (prefix tuning
without prefix_projection, prompt tuning without TEXT init, which would need the tokenizer), to
show that peft can continue training them; that check's logits must match as well. A
qlora4j_prefix_encoder.safetensors next to a prefix_projection adapter (qlora4j's raw encoder
weights, for resuming) is not a peft file and is ignored by peft.

The Java side writes the fixtures into target/peft-ours/ (run with the CPU, no GPU needed):

  ./mvnw -q -B -o test -Dtest='PeftGoldenTest#writeOurAdaptersForPeft+PromptLearningForPeftTest'
      -> target/peft-ours/ours-lora-llama, ours-dora-llama              (LoRA/DoRA, random init)
         target/peft-ours/ours-prefix-llama, ours-prefix-projection-llama, ours-prompt-llama
                                                                          (trained 5 AdamW steps)

  python3 tools/golden/check_our_adapters.py --models-dir src/test/resources/golden --ours target/peft-ours
"""

import argparse
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_peft_goldens as mpg  # noqa: E402  (sets CPU-only/offline env before torch loads)
import torch  # noqa: E402

DEFAULT_TOL = 1e-4


def adapter_dirs(ours):
    """[folder] when --ours is itself an adapter, else its subfolders that hold one."""
    if os.path.isfile(os.path.join(ours, "adapter_config.json")):
        return [ours]
    if not os.path.isdir(ours):
        raise FileNotFoundError("--ours %s is not a folder" % ours)
    return [os.path.join(ours, d) for d in sorted(os.listdir(ours))
            if os.path.isfile(os.path.join(ours, d, "adapter_config.json"))]


def read_expected(folder):
    """(base name, input ids, our logits [T, vocab] float32) from expected.json."""
    from safetensors.torch import load_file
    path = os.path.join(folder, "expected.json")
    if not os.path.isfile(path):
        raise FileNotFoundError("%s is missing: the Java side writes {\"base\", \"input_ids\", "
                                "\"logits_file\"} there" % path)
    with open(path, encoding="utf-8") as f:
        expected = json.load(f)
    for field in ("base", "input_ids"):
        if field not in expected:
            raise ValueError("%s has no %r field" % (path, field))
    ids = expected["input_ids"]
    if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], list):
        ids = ids[0]  # a batch of one
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)):
        raise ValueError("%s: input_ids must be a non-empty list of ints" % path)
    logits_path = os.path.join(folder, expected.get("logits_file", "expected_logits.safetensors"))
    if not os.path.isfile(logits_path):
        raise FileNotFoundError("%s (named by %s) is missing" % (logits_path, path))
    tensors = load_file(logits_path)
    if "logits" not in tensors:
        raise KeyError("%s has no tensor \"logits\" (keys: %s)" % (logits_path, sorted(tensors)))
    logits = tensors["logits"].to(torch.float32)
    if logits.dim() == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.dim() != 2:
        raise ValueError("%s: logits shape %s, expected [T, vocab]" % (logits_path, tuple(logits.shape)))
    return expected["base"], ids, logits


def check_one(folder, models_dir, tol):
    name = os.path.basename(os.path.normpath(folder))
    row = {"name": name, "base": "-", "peft_type": "-", "keys": 0, "max_abs": None,
           "max_ref": None, "rel": None, "ok": False, "notes": []}
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        row["peft_type"] = json.load(f).get("peft_type", "?")
    base_name, ids, ours = read_expected(folder)
    row["base"] = base_name

    model, texts, load_problems = mpg.load_adapter(models_dir, base_name, folder, trainable=False)
    row["notes"].extend("peft: " + t for t in load_problems)
    report = mpg.adapter_key_report(model, folder)
    row["keys"] = report["file_keys"]
    row["notes"].extend(report["problems"])

    ref = mpg.logits_single(model, ids)
    if tuple(ours.shape) != tuple(ref.shape):
        if ours.shape[1] == ref.shape[1] and ours.shape[0] == len(ids) and ref.shape[0] > len(ids):
            # Prompt tuning: peft returns rows for the virtual tokens too; ours may hold only T.
            row["notes"].append("compared the last %d of peft's %d rows (virtual-token rows "
                                "left out)" % (len(ids), ref.shape[0]))
            ref = ref[-len(ids):]
        else:
            row["notes"].append("logits shape %s, peft's %s" % (tuple(ours.shape), tuple(ref.shape)))
            return row
    if not torch.isfinite(ours).all():
        row["notes"].append("our logits hold NaN or Inf")
        return row
    row["max_abs"] = float((ours - ref).abs().max())
    row["max_ref"] = float(ref.abs().max())
    row["rel"] = row["max_abs"] / max(row["max_ref"], 1e-30)
    if row["rel"] > tol:
        row["notes"].append("relative difference %.3g above %.3g" % (row["rel"], tol))
    if row["peft_type"] in ("PREFIX_TUNING", "PROMPT_TUNING") and row["rel"] is not None and row["rel"] <= tol:
        check_trainable_reload(folder, models_dir, base_name, ids, ours, tol, row)
    row["ok"] = not row["notes"] or all(n.startswith(("compared the last", "trainable reload:"))
                                        and "FAILED" not in n for n in row["notes"])
    return row


def check_trainable_reload(folder, models_dir, base_name, ids, ours, tol, row):
    """PeftModel.from_pretrained(..., is_trainable=True) of a prompt-learning adapter, where peft
    can rebuild the trainable module from the file: logits in eval mode must match ours too."""
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("prefix_projection"):
        row["notes"].append("trainable reload: skipped (peft cannot rebuild a prefix_projection MLP from "
                            "prompt_embeddings; inference reload checked above)")
        return
    if cfg.get("peft_type") == "PROMPT_TUNING" and str(cfg.get("prompt_tuning_init", "")).endswith("TEXT"):
        row["notes"].append("trainable reload: skipped (TEXT init would tokenize with %r)"
                            % cfg.get("tokenizer_name_or_path"))
        return
    try:
        model, _, problems = mpg.load_adapter(models_dir, base_name, folder, trainable=True)
    except ValueError as e:
        # peft 0.21 refuses is_trainable=True for every prompt-learning adapter ("Cannot set a prompt learning
        # adapter to trainable when loading pretrained adapter"): a peft limitation, not a file problem.
        if "prompt learning" in str(e):
            row["notes"].append("trainable reload: skipped (peft refuses is_trainable=True for prompt learning: %s)" % e)
            return
        raise
    model.eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        ref = mpg.logits_single(model, ids)
    if ref.shape[0] != ours.shape[0]:
        ref = ref[-ours.shape[0]:]
    rel = float((ours - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)
    ok = rel <= tol and not problems and trainable
    row["notes"].append("trainable reload: %s (rel %.3g, trainable params %s%s)" % (
        "ok" if ok else "FAILED", rel, trainable, "; " + "; ".join(problems) if problems else ""))


def fmt(x):
    return "-" if x is None else "%.3g" % x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default="src/test/resources/golden",
                    help="folder with the base models make_goldens.py wrote")
    ap.add_argument("--ours", required=True, help="folder of qlora4j-saved adapters (or one adapter)")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL,
                    help="max |ours - peft| / max |peft| allowed (default 1e-4)")
    args = ap.parse_args(argv)

    mpg.setup()
    models_dir = os.path.abspath(args.models_dir)
    print("versions:", json.dumps(mpg.versions(), sort_keys=True), flush=True)
    dirs = adapter_dirs(os.path.abspath(args.ours))
    if not dirs:
        print("no adapter (a folder with adapter_config.json) in %s" % args.ours)
        return 2

    rows = []
    for folder in dirs:
        try:
            rows.append(check_one(folder, models_dir, args.tol))
        except Exception as e:
            traceback.print_exc()
            rows.append({"name": os.path.basename(os.path.normpath(folder)), "base": "-",
                         "peft_type": "-", "keys": 0, "max_abs": None, "max_ref": None,
                         "rel": None, "ok": False, "notes": ["error: %r" % (e,)]})

    print()
    head = "%-30s %-10s %-14s %5s %10s %10s %10s %5s" % (
        "adapter", "base", "peft_type", "keys", "max|diff|", "max|ref|", "rel", "ok")
    print(head)
    print("-" * len(head))
    for r in rows:
        print("%-30s %-10s %-14s %5d %10s %10s %10s %5s" % (
            r["name"], r["base"], r["peft_type"], r["keys"], fmt(r["max_abs"]), fmt(r["max_ref"]),
            fmt(r["rel"]), "yes" if r["ok"] else "NO"))
        for note in r["notes"]:
            print("    " + note)
    failed = [r["name"] for r in rows if not r["ok"]]
    if failed:
        print("\nFAILED: %s" % ", ".join(failed))
        return 1
    print("\nall %d adapters load in peft and match (tol %g)" % (len(rows), args.tol))
    return 0


if __name__ == "__main__":
    sys.exit(main())
