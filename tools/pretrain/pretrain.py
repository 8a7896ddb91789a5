#!/usr/bin/env python3
"""Pretrains qlora4j's embedded default model: a small Llama on the King James Bible.

Input: the corpus written by tools/pretrain/extract_corpus.sh (chapters as blocks of lines:
a "Book N" header, then one verse per line; one blank line between chapters), plus its records
CORPUS.source.json and CORPUS.copyright next to it when present.

Output (--out, a normal Hugging Face model folder, bfloat16 weights, ~22 MB):
  config.json, model.safetensors, generation_config.json    (save_pretrained)
  tokenizer.json, tokenizer_config.json                      (byte-level BPE, 4096 tokens)
  TRAINING.md          corpus, license, recipe, numbers, greedy samples
  training_log.jsonl   one line per log/eval point: step, loss, lr, val_loss (+ time_s)
  kjv-copyright.txt    Debian's copyright file of bible-kjv-text (when next to the corpus)

Steps (one function each): read the corpus, split off ~1% of chapters for validation, train
the tokenizer, encode and pack, build the model, train under the time budget, pick the best or
last checkpoint, save in bfloat16, reload the folder and check it, write the docs, move the
folder into place, print a one-line JSON summary (the last line of stdout).

The whole run, from start to the summary, stays within --time-budget seconds: the number of
steps is set from the measured speed of the first steps (so the cosine schedule completes), the
loop also stops at the deadline, and --reserve seconds are kept for saving and checking.

Runs with torch (CUDA, bf16 autocast), transformers 5.x, tokenizers, no network:
  python3 tools/pretrain/pretrain.py --corpus .pretrain-data/kjv.txt --out /tmp/default-model
"""

import time

# The budget covers the whole process, imports included.
T0 = time.monotonic()

import argparse  # noqa: E402
import copy  # noqa: E402
import faulthandler  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

# Never reach for the network: every input is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Fixed choices (the command-line flags cover the ones worth changing)
# ---------------------------------------------------------------------------------------------

# Special tokens take the first ids, in this order (Llama-like <unk>=0, <s>=1, </s>=2; a real
# <pad>; ChatML markers so that chat fine-tunes need no vocabulary change).
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))

# The same ChatML template as the golden fixtures (tools/golden/make_goldens.py).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL_SHAPE = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=6,
    num_attention_heads=6,   # head_dim 64
    num_key_value_heads=2,   # grouped-query attention, 3 query heads per KV head
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)

# Sampling defaults for generation_config.json: a tiny model needs some temperature and a
# repetition penalty to avoid loops, and top-k/top-p to keep it off the long tail.
GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.95,
                           repetition_penalty=1.1, max_new_tokens=64)

SAMPLE_PROMPTS = ["In the beginning", "And the LORD said unto Moses", "Blessed are the"]
SAMPLE_NEW_TOKENS = 48

# Validation: every VAL_EVERY-th chapter starting at VAL_PHASE (12 of 1189 chapters, ~0.9% of
# the text), spread over law, history, poetry, prophecy, gospels and epistles, so that the val
# loss measures the whole book rather than one style.
VAL_EVERY = 100
VAL_PHASE = 50

# Steps timed for the speed estimate: skip the first few (CUDA/cuBLAS start-up), time 20.
TIMING_SKIP = 5
TIMING_STEPS = 20

# The reloaded float32 val loss may differ from the training one (bf16 autocast on float32
# weights) by bf16 weight rounding only: a few hundredths of a nat at most.
VERIFY_TOLERANCE = 0.05

WARNINGS = []


def elapsed():
    return time.monotonic() - T0


def log(msg):
    print("[%6.1fs] %s" % (elapsed(), msg), flush=True)


def warn(msg):
    WARNINGS.append(msg)
    log("WARNING: " + msg)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="the text written by extract_corpus.sh")
    p.add_argument("--out", required=True, help="output model folder (replaced if it exists)")
    p.add_argument("--time-budget", type=float, default=360.0,
                   help="seconds for the whole run, start to summary (default 360)")
    p.add_argument("--reserve", type=float, default=30.0,
                   help="seconds of the budget kept for saving, reloading and checking (default 30)")
    p.add_argument("--max-epochs", type=float, default=30.0,
                   help="at most this many passes over the training tokens; 0 = no cap, only the "
                        "time budget (default 30: ~1.1M training tokens against ~11M parameters "
                        "overfit long before an H200 runs out of time; see README)")
    p.add_argument("--max-steps", type=int, default=0, help="hard step cap, 0 = none (smoke tests)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256, help="tokens of context per sequence")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor, times --lr")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100, help="steps between val evaluations")
    p.add_argument("--log-every", type=int, default=20, help="steps between progress lines")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (off by default: compiling eats the budget)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.time_budget <= args.reserve:
        p.error("--time-budget (%s) must be larger than --reserve (%s)" % (args.time_budget, args.reserve))
    if args.seq_len + 1 > MODEL_SHAPE["max_position_embeddings"]:
        p.error("--seq-len must be below max_position_embeddings (%d)" % MODEL_SHAPE["max_position_embeddings"])
    for name in ("batch_size", "eval_every", "log_every", "vocab_size"):
        if getattr(args, name) <= 0:
            p.error("--%s must be positive" % name.replace("_", "-"))
    return args


# ---------------------------------------------------------------------------------------------
# Small file helpers (atomic writes: temp file, then rename)
# ---------------------------------------------------------------------------------------------

def write_text_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def safetensors_header(path):
    """The JSON header of a .safetensors file: {name: {dtype, shape, data_offsets}}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return header


# ---------------------------------------------------------------------------------------------
# 1. Corpus
# ---------------------------------------------------------------------------------------------

def read_corpus(path):
    """Reads the corpus and its records. Chapters are the blocks between blank lines."""
    if not os.path.isfile(path):
        sys.exit("corpus %s not found: run tools/pretrain/extract_corpus.sh (on a machine with apt) "
                 "and carry its output here" % path)
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    chapters = [c.strip("\n") for c in text.split("\n\n") if c.strip()]
    if len(chapters) < 2 * VAL_EVERY:
        sys.exit("corpus %s has %d chapters (blocks between blank lines); expected the whole KJV "
                 "(1189) as written by extract_corpus.sh" % (path, len(chapters)))
    source = None
    if os.path.isfile(path + ".source.json"):
        with open(path + ".source.json", encoding="utf-8") as f:
            source = json.load(f)
    sha = hashlib.sha256(raw).hexdigest()
    if source and source.get("sha256") != sha:
        warn("%s says sha256 %s, the corpus has %s: the record is for another extraction"
             % (path + ".source.json", source.get("sha256"), sha))
    verses = sum(c.count("\n") for c in chapters)  # every line after a chapter's header
    copyright_path = path + ".copyright" if os.path.isfile(path + ".copyright") else None
    log("corpus %s: %d bytes, %d chapters, %d verses, sha256 %s"
        % (path, len(raw), len(chapters), verses, sha))
    return dict(path=path, bytes=len(raw), sha256=sha, chapters=chapters, verses=verses,
                source=source, copyright_path=copyright_path)


def split_chapters(chapters):
    """(train, val, val_indices): every VAL_EVERY-th chapter (from VAL_PHASE) is held out."""
    val_idx = [i for i in range(len(chapters)) if i % VAL_EVERY == VAL_PHASE]
    held = set(val_idx)
    train = [c for i, c in enumerate(chapters) if i not in held]
    val = [chapters[i] for i in val_idx]
    log("validation: %d chapters (%s)" % (len(val), ", ".join(c.split("\n", 1)[0] for c in val)))
    return train, val, val_idx


# ---------------------------------------------------------------------------------------------
# 2. Tokenizer
# ---------------------------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size):
    """Byte-level BPE (GPT-2 pre-tokenizer and decoder) trained on the training chapters only,
    with a post-processor that prepends <s> (as Llama's tokenizer does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols are in the vocabulary, so no text ever needs <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError("special token %s got id %r, expected %d" % (t, tok.token_to_id(t), i))
    # Single sequence: "<s> A"; pair: "<s> A <s> B".
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0",
        pair="<s>:0 $A:0 <s>:1 $B:1",
        special_tokens=[("<s>", BOS_ID)],
    )
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != vocab_size:
        warn("the tokenizer has %d tokens, asked for %d (the corpus ran out of merges)" % (size, vocab_size))
    log("tokenizer: byte-level BPE, %d tokens" % size)
    return tok


def tokenizer_config():
    """tokenizer_config.json: the special tokens by name, BOS added, EOS not, ChatML template."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_SHAPE["max_position_embeddings"],
        "padding_side": "left",  # left padding is what batched generation needs
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tokenizer_files(tok, folder):
    write_text_atomic(os.path.join(folder, "tokenizer.json"), tok.to_str(pretty=True))
    write_json_atomic(os.path.join(folder, "tokenizer_config.json"), tokenizer_config())


def check_tokenizer(tok, folder, sample_texts):
    """Byte-level BPE must be lossless; transformers' class must read the files the same way."""
    for text in sample_texts:
        back = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        if back != text:
            raise RuntimeError("tokenizer round trip changed the text: %r -> %r" % (text[:80], back[:80]))
    enc = tok.encode("In the beginning")
    if enc.ids[0] != BOS_ID or BOS_ID in enc.ids[1:]:
        raise RuntimeError("encode() should start with exactly one <s>: %s" % enc.ids)
    # Cross-check through transformers (non-fatal: tokenizer.json itself is the format).
    try:
        from transformers import PreTrainedTokenizerFast
        hf = PreTrainedTokenizerFast.from_pretrained(folder)
        for text in sample_texts:
            if list(hf(text)["input_ids"]) != list(tok.encode(text).ids):
                warn("transformers' tokenizer encodes %r differently from tokenizers" % text[:40])
                break
        if hf.pad_token_id != PAD_ID or hf.bos_token_id != BOS_ID or hf.eos_token_id != EOS_ID:
            warn("transformers reads pad/bos/eos ids %s/%s/%s, expected %d/%d/%d"
                 % (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, PAD_ID, BOS_ID, EOS_ID))
        msgs = [{"role": "user", "content": "Who created the heaven?"}]
        rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        expected = "<|im_start|>user\nWho created the heaven?<|im_end|>\n<|im_start|>assistant\n"
        if rendered != expected:
            warn("apply_chat_template rendered %r, expected %r" % (rendered, expected))
    except Exception as e:  # noqa: BLE001 (a cross-check only)
        warn("transformers tokenizer cross-check failed: %r" % (e,))


# ---------------------------------------------------------------------------------------------
# 3. Encoding and packing
# ---------------------------------------------------------------------------------------------

def encode_stream(tok, chapters, device):
    """All chapters as one token stream: <s> chapter </s> <s> chapter </s> ... Each chapter is
    a document; packing cuts across documents, and </s> <s> marks the boundaries."""
    stream = []
    for enc in tok.encode_batch(chapters, add_special_tokens=False):
        stream.append(BOS_ID)
        stream.extend(enc.ids)
        stream.append(EOS_ID)
    return torch.tensor(stream, dtype=torch.long, device=device)


def cut_windows(stream, width, offset=0):
    """(n, width) non-overlapping windows of the stream from `offset`, plus the shorter tail
    (or None when under 2 tokens). Each window is input tokens [:-1] and targets [1:]."""
    usable = stream[offset:]
    n = usable.numel() // width
    full = usable[: n * width].view(n, width)
    tail = usable[n * width:]
    return full, (tail.view(1, -1) if tail.numel() >= 2 else None)


class Batches:
    """Endless random batches of packed training windows. Each epoch re-cuts the stream from a
    random offset (so window boundaries move) and shuffles the windows."""

    def __init__(self, stream, seq_len, batch_size, seed):
        self.stream, self.width, self.batch_size = stream, seq_len + 1, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch, self._windows, self._order, self._pos = 0, None, None, 0
        self.steps_per_epoch = (stream.numel() - seq_len) // self.width // batch_size
        if self.steps_per_epoch < 1:
            raise RuntimeError("the training stream (%d tokens) holds less than one batch of %d x %d"
                               % (stream.numel(), batch_size, self.width))

    def _new_epoch(self):
        offset = int(torch.randint(0, self.width - 1, (1,), generator=self.gen))
        self._windows, _ = cut_windows(self.stream, self.width, offset)
        self._order = torch.randperm(self._windows.shape[0], generator=self.gen).to(self.stream.device)
        self._pos = 0

    def next(self):
        if self._windows is None or self._pos + self.batch_size > self._order.numel():
            if self._windows is not None:
                self.epoch += 1
            self._new_epoch()
        idx = self._order[self._pos: self._pos + self.batch_size]
        self._pos += self.batch_size
        return self._windows[idx]


# ---------------------------------------------------------------------------------------------
# 4. Model
# ---------------------------------------------------------------------------------------------

def transformers_major():
    import transformers
    return int(transformers.__version__.split(".")[0])


def make_config(vocab_size):
    from transformers import LlamaConfig
    shape = dict(MODEL_SHAPE)
    theta = shape.pop("rope_theta")
    # transformers 5 keeps rope settings in `rope_parameters`; 4.x took `rope_theta`.
    if transformers_major() >= 5:
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    else:
        rope = {"rope_theta": theta}
    return LlamaConfig(vocab_size=vocab_size, hidden_act="silu", tie_word_embeddings=True,
                       attention_bias=False, mlp_bias=False, attention_dropout=0.0,
                       bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                       initializer_range=0.02, use_cache=True, **shape, **rope)


def build_model(vocab_size, device, seed):
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(vocab_size)).to(device=device, dtype=torch.float32)
    model.train()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")
    n = sum(p.numel() for p in model.parameters())  # the tied matrix counts once
    log("model: LlamaForCausalLM %s, vocab %d, %.2fM parameters, attention %s"
        % ({k: v for k, v in MODEL_SHAPE.items()}, vocab_size, n / 1e6,
           getattr(model.config, "_attn_implementation", "?")))
    return model, n


def make_optimizer(model, args):
    """AdamW; weight decay on matrices (embedding included), none on the RMSNorm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if args.device.startswith("cuda"):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def lr_at(step, base, warmup, total, floor_ratio):
    """Linear warm-up to `base`, then cosine down to floor_ratio * base at step `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / (total - warmup))
    return base * (floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def autocast(device, enabled=True):
    # bf16 autocast on CUDA (float32 master weights and optimizer state); plain float32 on CPU.
    on = enabled and device.startswith("cuda")
    return torch.autocast(device_type="cuda" if on else "cpu", dtype=torch.bfloat16, enabled=on)


def token_loss(model, windows, device, use_autocast):
    """Sum of next-token NLL (nats, float32 softmax) and the number of predicted tokens."""
    x = windows[:, :-1].contiguous()
    y = windows[:, 1:].contiguous()
    with autocast(device, use_autocast):
        logits = model(input_ids=x, use_cache=False).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    return loss, y.numel()


@torch.no_grad()
def mean_loss(model, window_sets, device, batch_size, use_autocast=True):
    """Mean next-token NLL per token over every window of every set (sets: 2-D tensors)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for windows in window_sets:
        if windows is None:
            continue
        for i in range(0, windows.shape[0], batch_size):
            s, n = token_loss(model, windows[i: i + batch_size], device, use_autocast)
            total += s.double()
            count += n
    model.train(was_training)
    return float(total.item() / max(count, 1))


# ---------------------------------------------------------------------------------------------
# 5. Training under the time budget
# ---------------------------------------------------------------------------------------------

def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(model, fwd, data, val_sets, train_eval, args):
    """Trains `model` (forward through `fwd`, which may be compiled) and returns a result dict.

    Keeps the best-val weights on the CPU and a log of (step, loss, lr, val_loss, time_s)."""
    device = args.device
    deadline = args.time_budget - args.reserve
    opt = make_optimizer(model, args)
    cap = math.inf
    if args.max_epochs > 0:
        cap = max(1, int(args.max_epochs * data.steps_per_epoch))
    if args.max_steps > 0:
        cap = min(cap, args.max_steps)
    # Until the speed is known the schedule is only warming up; its length is set at the
    # timing point (a huge placeholder when only the time budget limits the run).
    total = cap if cap != math.inf else 10 ** 9
    warmup = max(1, min(args.warmup, total // 5 if total < 10 ** 9 else args.warmup))
    tokens_per_step = args.batch_size * args.seq_len

    records = []
    # The first evaluation pays one-off start-up costs (kernels, allocator, compilation);
    # time a second one to know what an evaluation costs.
    mean_loss(fwd, val_sets, device, args.batch_size)
    sync(device)
    t = time.monotonic()
    val0 = mean_loss(fwd, val_sets, device, args.batch_size)
    eval_s = time.monotonic() - t
    best = dict(val_loss=val0, step=0, state=None)
    records.append(dict(step=0, loss=None, lr=0.0, val_loss=round(val0, 5), time_s=round(elapsed(), 1)))
    # After training come about four more evaluations' worth of work (final val, train subset,
    # the reloaded float32 val, samples): keep time for them beyond the fixed reserve.
    deadline -= 4 * eval_s
    log("step 0: val_loss %.4f (ln V = %.4f), eval took %.2fs; %d steps per epoch, cap %s steps"
        % (val0, math.log(model.config.vocab_size), eval_s, data.steps_per_epoch,
           "none" if cap == math.inf else cap))

    step, stop_reason = 0, "schedule complete"
    window_sum = torch.zeros((), device=device)
    window_n, last_train_loss, last_eval_step, last_val = 0, None, 0, val0
    t_timing = None
    t_train = time.monotonic()
    while step < total:
        if elapsed() > deadline:
            stop_reason = "time budget"
            break
        lr = lr_at(step, args.lr, warmup, total, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        s, n = token_loss(fwd, data.next(), device, True)
        loss = s / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window_sum += loss.detach()
        window_n += 1
        step += 1

        # Speed estimate -> schedule length: as many steps as fit before the deadline (with
        # the evaluations they bring and a 5% margin), at most the epoch/step cap.
        if step == TIMING_SKIP:
            sync(device)
            t_timing = time.monotonic()
        elif step == TIMING_SKIP + TIMING_STEPS and t_timing is not None:
            sync(device)
            per_step = (time.monotonic() - t_timing) / TIMING_STEPS
            per_step_all = per_step + eval_s / args.eval_every
            fit = step + int(0.95 * (deadline - elapsed()) / per_step_all)
            total = max(step, min(cap, fit))
            if warmup >= total:  # only when the machine is very slow: keep a real decay phase
                warmup = max(1, total // 10)
            log("speed: %.1f ms/step (%.0f tokens/s); schedule: %d steps (%.1f epochs), warm-up %d%s"
                % (per_step * 1e3, tokens_per_step / per_step, total, total / data.steps_per_epoch,
                   warmup, "" if total < cap else " (epoch/step cap)"))

        if step % args.log_every == 0 or step == total:
            last_train_loss = float((window_sum / window_n).item())
            window_sum.zero_()
            window_n = 0
            log("step %d/%d  epoch %.2f  loss %.4f  lr %.2e" % (step, total, step / data.steps_per_epoch,
                                                                last_train_loss, lr))
            records.append(dict(step=step, loss=round(last_train_loss, 5), lr=float("%.6g" % lr), val_loss=None,
                                time_s=round(elapsed(), 1)))
            if not math.isfinite(last_train_loss):
                stop_reason = "non-finite loss"
                break

        if step % args.eval_every == 0 or step == total:
            last_val = evaluate_and_keep_best(model, fwd, val_sets, step, best, records, args)
            last_eval_step = step

    sync(device)
    train_s = time.monotonic() - t_train
    if step != last_eval_step and stop_reason != "non-finite loss":
        last_val = evaluate_and_keep_best(model, fwd, val_sets, step, best, records, args)
    log("training stopped at step %d (%s) after %.1fs" % (step, stop_reason, train_s))

    # The saved checkpoint: the last weights, unless an earlier evaluation was better.
    chosen = "last (step %d)" % step
    chosen_val = last_val
    if best["state"] is not None and (best["val_loss"] < last_val or not math.isfinite(last_val)):
        model.load_state_dict(best["state"])
        chosen, chosen_val = "best val (step %d)" % best["step"], best["val_loss"]
    train_loss_eval = mean_loss(fwd, [train_eval], device, args.batch_size)
    log("checkpoint: %s, val_loss %.4f, train_loss (fixed train subset) %.4f" % (chosen, chosen_val, train_loss_eval))
    return dict(steps=step, planned_steps=total, warmup=warmup, stop_reason=stop_reason,
                train_s=train_s, records=records, chosen=chosen, val_loss=chosen_val,
                train_loss_last_window=last_train_loss, train_loss_eval=train_loss_eval,
                epochs=step / data.steps_per_epoch, tokens_seen=step * tokens_per_step,
                best_step=best["step"], diverged=stop_reason == "non-finite loss")


def evaluate_and_keep_best(model, fwd, val_sets, step, best, records, args):
    val = mean_loss(fwd, val_sets, args.device, args.batch_size)
    better = math.isfinite(val) and val < best["val_loss"]
    if better:
        best.update(val_loss=val, step=step,
                    state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    if records and records[-1]["step"] == step:
        records[-1]["val_loss"] = round(val, 5)
    else:
        records.append(dict(step=step, loss=None, lr=None, val_loss=round(val, 5), time_s=round(elapsed(), 1)))
    log("eval step %d: val_loss %.4f  ppl %.2f%s" % (step, val, math.exp(min(val, 50.0)),
                                                    "  (best)" if better else ""))
    return val


# ---------------------------------------------------------------------------------------------
# 6. Save (bfloat16) and check the saved folder
# ---------------------------------------------------------------------------------------------

def generation_config():
    from transformers import GenerationConfig
    return GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                            **GENERATION_DEFAULTS)


def save_model(model, folder):
    """Writes config.json, model.safetensors (bf16) and generation_config.json; returns the
    bf16 state dict that was saved (for the exact reload comparison)."""
    model.to(torch.bfloat16)  # save_pretrained records the parameters' dtype in config.json
    model.generation_config = generation_config()
    if transformers_major() >= 5:
        model.save_pretrained(folder)  # v5 writes safetensors only (the flag is gone)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        raise RuntimeError("save_pretrained wrote no model.safetensors in %s: %s" % (folder, sorted(os.listdir(folder))))
    if not os.path.isfile(os.path.join(folder, "generation_config.json")):
        model.generation_config.save_pretrained(folder)
    dtypes = {v["dtype"] for v in safetensors_header(weights).values()}
    if dtypes != {"BF16"}:
        raise RuntimeError("model.safetensors holds dtypes %s, expected only BF16" % sorted(dtypes))
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("dtype", cfg.get("torch_dtype")) != "bfloat16":
        warn("config.json said dtype %r; set to bfloat16" % cfg.get("dtype", cfg.get("torch_dtype")))
        cfg["dtype"] = "bfloat16"
        write_json_atomic(cfg_path, cfg)
    log("saved %s (%.1f MB)" % (weights, os.path.getsize(weights) / 1e6))
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def reload_and_verify(folder, saved_state, val_sets, train_val_loss, args):
    """from_pretrained(bf16) must give the saved weights bit for bit; upcast to float32, its
    val loss (true float32 matmuls) must be close to the training-time one."""
    from transformers import LlamaForCausalLM
    kwargs = {"attn_implementation": "eager"}  # plain softmax attention: the reference path
    kwargs["dtype" if transformers_major() >= 5 else "torch_dtype"] = torch.bfloat16
    model = LlamaForCausalLM.from_pretrained(folder, **kwargs)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise RuntimeError("reloaded parameters have dtypes %s, expected bfloat16" % dtypes)
    state = model.state_dict()
    for k, v in saved_state.items():
        if k not in state or not torch.equal(state[k].cpu(), v):
            raise RuntimeError("reloaded tensor %s differs from the saved one" % k)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("reloaded lm_head is not tied to embed_tokens")
    model = model.float().to(args.device).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    val = mean_loss(model, val_sets, args.device, args.batch_size, use_autocast=False)
    diff = abs(val - train_val_loss)
    ok = diff <= VERIFY_TOLERANCE
    log("reloaded (bf16 -> float32) val_loss %.4f vs training %.4f: |diff| %.4f %s"
        % (val, train_val_loss, diff, "ok" if ok else "TOO LARGE (> %.2f)" % VERIFY_TOLERANCE))
    if not ok:
        warn("reloaded val loss %.4f is %.4f away from the training val loss %.4f"
             % (val, diff, train_val_loss))
    return model, val, ok


@torch.no_grad()
def greedy(model, tok, prompt, n_new, device):
    """Plain greedy decoding (argmax, full forward per token, stop at </s>): the simplest
    reference for the Java engine. Returns (prompt ids, new ids, text)."""
    ids = list(tok.encode(prompt).ids)
    new = []
    for _ in range(n_new):
        x = torch.tensor([(ids + new)[-MODEL_SHAPE["max_position_embeddings"]:]], device=device)
        nxt = int(model(input_ids=x, use_cache=False).logits[0, -1].float().argmax())
        new.append(nxt)
        if nxt == EOS_ID:
            break
    return ids, new, tok.decode(new, skip_special_tokens=True)


def hf_generate_check(model, prompt_ids, expect_new, device):
    """model.generate (greedy, KV cache) should give the same tokens; a warning if not."""
    from transformers import GenerationConfig
    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=len(expect_new),
                           bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    saved = model.generation_config
    model.generation_config = copy.deepcopy(gen)  # nothing inherited from the sampling defaults
    try:
        x = torch.tensor([prompt_ids], device=device)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen)
        seqs = out.sequences if hasattr(out, "sequences") else out
        got = seqs[0, len(prompt_ids):].tolist()
        if got != expect_new:
            warn("model.generate greedy gave %s..., the plain loop %s... (float rounding can flip a "
                 "near-tie)" % (got[:8], expect_new[:8]))
    except Exception as e:  # noqa: BLE001 (a cross-check only)
        warn("model.generate failed: %r" % (e,))
    finally:
        model.generation_config = saved


def make_samples(model, tok, device):
    samples = []
    for prompt in SAMPLE_PROMPTS:
        prompt_ids, new, text = greedy(model, tok, prompt, SAMPLE_NEW_TOKENS, device)
        hf_generate_check(model, prompt_ids, new, device)
        samples.append(dict(prompt=prompt, prompt_ids=prompt_ids, new_ids=new, text=text))
        log("greedy %r -> %r" % (prompt, text))
    return samples


# ---------------------------------------------------------------------------------------------
# 7. Docs
# ---------------------------------------------------------------------------------------------

def write_training_log(folder, records):
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    write_text_atomic(os.path.join(folder, "training_log.jsonl"), "\n".join(lines) + "\n")


def write_training_md(folder, info):
    c, r, a = info["corpus"], info["result"], info["args"]
    src = c["source"] or {}
    version = src.get("package_version", "unknown (no %s.source.json next to the corpus)" % os.path.basename(c["path"]))
    sample_md = "\n".join(
        "Prompt `%s` (prompt ids %s):\n\n```\n%s%s\n```\n" % (s["prompt"], s["prompt_ids"], s["prompt"], s["text"])
        for s in info["samples"])
    val_names = ", ".join(ch.split("\n", 1)[0] for ch in info["val_chapters"])
    md = f"""# qlora4j default model: training record

A small Llama-architecture language model pretrained from scratch on the King James Bible.
qlora4j uses it whenever `--model` is not given. It writes Jacobean English in the style of
the KJV; it knows nothing else and follows no instructions. Made by
`tools/pretrain/pretrain.py` (see `tools/pretrain/README.md` to reproduce).

## Corpus

- Text: the King James Version of the Bible from the Debian package `bible-kjv-text`
  version {version}, extracted by `tools/pretrain/extract_corpus.sh` (`bible -l 100000
  "Gen1:1-Rev22:21"`, verse numbers removed): a "Book N" header line per chapter, one verse
  per line, a blank line between chapters.
- {c['bytes']} bytes, sha256 `{c['sha256']}`; {len(c['chapters'])} chapters, {c['verses']} verses.
- Tokens (this tokenizer, with `<s>`/`</s>` around each chapter): {info['train_tokens']} training,
  {info['val_tokens']} validation.
- Validation: every {VAL_EVERY}th chapter from index {VAL_PHASE} (0-based, in Bible order),
  {len(info['val_chapters'])} chapters: {val_names}. They are left out of the tokenizer's and
  the model's training.

## License of the text

The King James Version (translated 1611 under King James I of England) is in the public
domain: the Debian copyright file of `bible-kjv-text`
(`/usr/share/doc/bible-kjv-text/copyright`, copied here as `kjv-copyright.txt`) records that the
copyright of the KJV text has expired because the translation was made in 1611. The other terms in that
file (the Bible Retrieval System's free-use notice and the GPL-2+ of the Debian program code)
cover the retrieval software, not the scripture text. (In the United Kingdom the Crown still
holds rights to the Authorized Version by letters patent; elsewhere it is public domain.)
The model weights are derived only from this text and from randomly initialised parameters.

## Tokenizer

Byte-level BPE (`tokenizers`, GPT-2 pre-tokenizer regex, no prefix space, ByteLevel decoder),
{info['vocab_size']} tokens trained on the training chapters (min frequency 2, all 256 bytes in
the alphabet, so nothing is ever `<unk>`). Special tokens: `<unk>`=0, `<s>`=1, `</s>`=2,
`<pad>`=3, `<|im_start|>`=4, `<|im_end|>`=5. Encoding prepends `<s>` (TemplateProcessing),
appends nothing. `tokenizer_config.json` names the tokens, `model_max_length`
{MODEL_SHAPE['max_position_embeddings']} and a ChatML `chat_template`.

## Model

`LlamaForCausalLM`, {info['params']} parameters ({info['params'] / 1e6:.2f}M), weights saved in bfloat16:

- vocab {info['vocab_size']}, hidden {MODEL_SHAPE['hidden_size']}, intermediate {MODEL_SHAPE['intermediate_size']} (SiLU-gated MLP)
- {MODEL_SHAPE['num_hidden_layers']} layers, {MODEL_SHAPE['num_attention_heads']} attention heads, {MODEL_SHAPE['num_key_value_heads']} KV heads (grouped-query), head_dim {MODEL_SHAPE['hidden_size'] // MODEL_SHAPE['num_attention_heads']}
- RoPE theta {MODEL_SHAPE['rope_theta']:g} (default rope), max positions {MODEL_SHAPE['max_position_embeddings']}, RMSNorm eps {MODEL_SHAPE['rms_norm_eps']:g}
- tied input/output embeddings, no biases; bos 1, eos 2, pad 3

## Recipe

- Data: the training chapters as one stream `<s> chapter </s> <s> chapter </s> ...`, cut into
  windows of {a.seq_len + 1} tokens ({a.seq_len} inputs + {a.seq_len} shifted targets); every
  epoch re-cuts from a random offset and shuffles the windows. {info['steps_per_epoch']} steps per epoch.
- Batch {a.batch_size} sequences x {a.seq_len} tokens = {a.batch_size * a.seq_len} tokens per step.
- AdamW, lr {a.lr:g}, betas (0.9, 0.95), eps 1e-8, weight decay {a.weight_decay:g} on matrices
  (embedding included) and none on norm gains; gradient clipping at {a.grad_clip:g}.
- Schedule: linear warm-up {r['warmup']} steps, cosine to {a.min_lr_ratio:g} x lr at step
  {r['planned_steps']} (length set from the measured speed and the time budget of
  {a.time_budget:g} s; {cap_text(a)}).
- bf16 autocast on float32 weights; loss in float32; torch.compile {'on' if a.compile else 'off'};
  seed {a.seed}. Val loss every {a.eval_every} steps; the best-val weights are kept.
- Steps done: {r['steps']} ({r['epochs']:.2f} epochs, {r['tokens_seen']} tokens), stopped by:
  {r['stop_reason']}; training time {r['train_s']:.1f} s; whole run {info['total_s']:.1f} s.
- Hardware/software: {info['gpu']}; torch {info['versions']['torch']}, transformers
  {info['versions']['transformers']}, tokenizers {info['versions']['tokenizers']}, Python
  {info['versions']['python']}.
- Saved checkpoint: {r['chosen']}.

## Results (per token, natural log)

| | loss | perplexity |
|---|---|---|
| train, last {a.log_every} steps (training mode) | {fmt(r['train_loss_last_window'])} | {fmt_ppl(r['train_loss_last_window'])} |
| train, fixed subset of {info['train_eval_windows']} windows (saved weights) | {fmt(r['train_loss_eval'])} | {fmt_ppl(r['train_loss_eval'])} |
| validation (saved weights, bf16 autocast) | {fmt(r['val_loss'])} | {fmt_ppl(r['val_loss'])} |
| validation, reloaded bf16 folder upcast to float32 | {fmt(info['val_loss_reloaded'])} | {fmt_ppl(info['val_loss_reloaded'])} |

Validation loss: the mean next-token NLL over the validation stream cut into windows of
{a.seq_len + 1} tokens from its start (no overlap, the shorter tail included; the first token
of each window is context only). `training_log.jsonl` has the curve (step, loss, lr, val_loss,
time_s).

## Greedy samples

Reloaded model in float32, argmax decoding, up to {SAMPLE_NEW_TOKENS} new tokens, stop at `</s>`.

{sample_md}
`generation_config.json` samples by default (temperature {GENERATION_DEFAULTS['temperature']},
top-k {GENERATION_DEFAULTS['top_k']}, top-p {GENERATION_DEFAULTS['top_p']}, repetition penalty
{GENERATION_DEFAULTS['repetition_penalty']}, up to {GENERATION_DEFAULTS['max_new_tokens']} new tokens).
"""
    if WARNINGS:
        md += "\n## Warnings during the run\n\n" + "\n".join("- " + w for w in WARNINGS) + "\n"
    write_text_atomic(os.path.join(folder, "TRAINING.md"), md)


def cap_text(a):
    caps = (["at most %g epochs" % a.max_epochs] if a.max_epochs > 0 else []) + \
           (["at most %d steps" % a.max_steps] if a.max_steps > 0 else [])
    return " and ".join(caps) if caps else "no epoch or step cap"


def fmt(x):
    return "n/a" if x is None else "%.4f" % x


def fmt_ppl(x):
    return "n/a" if x is None else "%.2f" % math.exp(min(x, 50.0))


# ---------------------------------------------------------------------------------------------
# 8. Main
# ---------------------------------------------------------------------------------------------

def staging_dir(out):
    """A fresh sibling folder to build the output in; renamed over --out at the end."""
    stage = out.rstrip("/") + ".partial"
    if os.path.exists(stage):
        shutil.rmtree(stage)
    os.makedirs(stage)
    return stage


def move_into_place(stage, out):
    out = out.rstrip("/")
    old = out + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(stage, out)
    if os.path.exists(old):
        shutil.rmtree(old)


def versions():
    import tokenizers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def main():
    args = parse_args()
    # Last resort if something hangs: dump every thread's stack and exit well after the budget.
    faulthandler.dump_traceback_later(args.time_budget + 60, exit=True)
    device = args.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("--device %s but CUDA is not available" % device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU (%s)" % platform.machine()
    log("device: %s; budget %.0fs (reserve %.0fs); %s" % (gpu, args.time_budget, args.reserve, versions()))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    stage = staging_dir(args.out)

    corpus = read_corpus(args.corpus)
    train_ch, val_ch, _ = split_chapters(corpus["chapters"])
    tok = train_tokenizer(train_ch, args.vocab_size)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    write_tokenizer_files(tok, stage)
    check_tokenizer(tok, stage, val_ch[:4] + ["Hello, world!  Tabs\tand\nnewlines; cafe\u0301 \u2603"])

    train_stream = encode_stream(tok, train_ch, device)
    val_stream = encode_stream(tok, val_ch, device)
    width = args.seq_len + 1
    val_full, val_tail = cut_windows(val_stream, width)
    val_sets = [val_full, val_tail]
    # A fixed training subset, the size of the val set, to compare train and val loss the
    # same way (eval mode, same windows every time).
    train_windows, _ = cut_windows(train_stream, width)
    pick = torch.randperm(train_windows.shape[0], generator=torch.Generator().manual_seed(0))
    train_eval = train_windows[pick[: max(1, val_full.shape[0])].to(train_windows.device)]
    log("tokens: train %d, val %d (%d windows of %d + tail %d)"
        % (train_stream.numel(), val_stream.numel(), val_full.shape[0], width,
           0 if val_tail is None else val_tail.shape[1]))

    model, n_params = build_model(vocab_size, device, args.seed)
    fwd = torch.compile(model) if args.compile else model
    data = Batches(train_stream, args.seq_len, args.batch_size, args.seed)
    result = train(model, fwd, data, val_sets, train_eval, args)

    saved_state = save_model(model, stage)
    del fwd, model
    reloaded, val_reloaded, verified = reload_and_verify(stage, saved_state, val_sets, result["val_loss"], args)
    samples = make_samples(reloaded, tok, device)

    if corpus["copyright_path"]:
        shutil.copyfile(corpus["copyright_path"], os.path.join(stage, "kjv-copyright.txt"))
    else:
        warn("no %s.copyright next to the corpus: kjv-copyright.txt not written" % args.corpus)
    write_training_log(stage, result["records"])
    info = dict(corpus=corpus, result=result, args=args, samples=samples, val_chapters=val_ch,
                train_tokens=train_stream.numel(), val_tokens=val_stream.numel(),
                steps_per_epoch=data.steps_per_epoch, vocab_size=vocab_size, params=n_params,
                val_loss_reloaded=val_reloaded, train_eval_windows=train_eval.shape[0],
                gpu=gpu, versions=versions(), total_s=elapsed())
    write_training_md(stage, info)
    move_into_place(stage, args.out)
    files = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    log("wrote %s: %s (%.1f MB)" % (args.out, files, sum(files.values()) / 1e6))

    ok = verified and not result["diverged"]
    summary = dict(
        ok=ok, out=os.path.abspath(args.out), gpu=gpu, params=n_params, vocab_size=vocab_size,
        corpus_sha256=corpus["sha256"], train_tokens=train_stream.numel(), val_tokens=val_stream.numel(),
        steps=result["steps"], planned_steps=result["planned_steps"], epochs=round(result["epochs"], 3),
        stop_reason=result["stop_reason"], checkpoint=result["chosen"],
        train_loss=None if result["train_loss_last_window"] is None else round(result["train_loss_last_window"], 5),
        train_loss_eval=round(result["train_loss_eval"], 5),
        val_loss=round(result["val_loss"], 5), val_ppl=round(math.exp(min(result["val_loss"], 50.0)), 3),
        val_loss_reloaded_fp32=round(val_reloaded, 5), train_s=round(result["train_s"], 1),
        total_s=round(elapsed(), 1), bytes=sum(files.values()),
        samples={s["prompt"]: s["text"] for s in samples}, warnings=len(WARNINGS))
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
