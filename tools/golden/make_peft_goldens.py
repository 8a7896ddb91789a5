#!/usr/bin/env python3
"""Makes the adapter test fixtures ("peft goldens") that qlora4j's Java tests compare against.

For the tiny base models that make_goldens.py wrote (llama-f32, qwen2-f32), this builds adapters
with peft itself (get_peft_model), gives them deterministic non-trivial values, saves them with
peft's save_pretrained (adapter_config.json + adapter_model.safetensors) and records what peft
computes with them: logits, merged-model logits, the loss, gradients of one backward pass and
the losses of ten AdamW steps. Under --out:

  manifest.json                   the cases made, versions, failures, warnings
  <case>/adapter/                 peft's own files, exactly as save_pretrained wrote them
  <case>/golden.json              ids, numbers, checks (tools/golden/README.md lists every field)
  <case>/golden.safetensors       logits, gradients, trained adapter tensors

Cases: lora-llama, lora-rslora-qwen2, dora-llama, lora-modules-to-save-qwen2, prefix-llama,
prompt-llama (see CASES below).

Run on a machine with torch, transformers 5.x, peft, safetensors; no network, no GPU used:

  python3 tools/golden/make_peft_goldens.py --models-dir src/test/resources/golden --out /tmp/peft-golden

Everything runs on the CPU in float32 on one thread. The script checks itself (the base model
gives the base golden's logits, the saved adapter reloads to the same logits, merged logits equal
unmerged ones, the prefix/prompt semantics written in the README reproduce peft's logits by
hand, the loss recomputed in float64) and exits non-zero when a check fails or a case crashes.
A case whose checks fail is still written (with its problems in golden.json and the manifest),
so the numbers can be inspected; a case that crashes is not written.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings

# CPU only, never the network: set before torch (imported by make_goldens) is loaded.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (shared helpers: torch setup, atomic JSON, logits)
import torch  # noqa: E402

GENERATOR = "tools/golden/make_peft_goldens.py"

# Prompts of the base model's golden.json that every case is run on.
PROMPT_INDICES = [0, 1]
# Gradients and the training curve use this one prompt as a batch of one sequence,
# labels = input_ids (transformers shifts them: mean over the T-1 predicted tokens).
TRAIN_PROMPT_INDEX = 0

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Every case: a base model folder under --models-dir, a peft config, what else to record.
# lora-modules-to-save uses qwen2-f32 on purpose: llama-f32 ties lm_head to embed_tokens, and
# peft's ModulesToSaveWrapper copies lm_head, which silently unties it (peft issue #2777;
# peft >= 0.18 warns and offers ensure_weight_tying). An untied base keeps the case unambiguous.
CASES = [
    {
        "name": "lora-llama", "base": "llama-f32", "kind": "lora", "seed": 5001,
        "config": {"r": 8, "lora_alpha": 16, "target_modules": ALL_PROJECTIONS},
        "merge": True, "grads": True, "train": True,
        "description": "plain LoRA on all 7 projections of every layer, scaling alpha/r = 2",
    },
    {
        "name": "lora-rslora-qwen2", "base": "qwen2-f32", "kind": "lora", "seed": 5002,
        "config": {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]},
        "merge": True, "grads": False, "train": False,
        "description": "rank-stabilised LoRA (scaling alpha/sqrt(r) = 4) on q_proj and v_proj, "
                       "which have biases in Qwen2",
    },
    {
        "name": "dora-llama", "base": "llama-f32", "kind": "lora", "seed": 5003,
        "config": {"r": 4, "lora_alpha": 8, "use_dora": True,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "merge": True, "grads": True, "train": False,
        "description": "DoRA on the attention projections, scaling alpha/r = 2, magnitude vectors "
                       "perturbed away from the weight norms",
    },
    {
        "name": "lora-modules-to-save-qwen2", "base": "qwen2-f32", "kind": "lora", "seed": 5004,
        "config": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
                   "modules_to_save": ["lm_head"]},
        "merge": True, "grads": False, "train": False,
        "description": "LoRA on all-linear (every linear but lm_head) plus a full trainable copy of "
                       "lm_head (modules_to_save); Qwen2 because its lm_head is untied",
    },
    {
        "name": "prefix-llama", "base": "llama-f32", "kind": "prefix", "seed": 5005,
        "config": {"num_virtual_tokens": 5, "prefix_projection": False},
        "merge": False, "grads": False, "train": False,
        "description": "prefix tuning, 5 virtual tokens, no projection MLP (GQA: 2 KV heads)",
    },
    {
        "name": "prompt-llama", "base": "llama-f32", "kind": "prompt", "seed": 5006,
        "config": {"num_virtual_tokens": 4, "prompt_tuning_init": "RANDOM"},
        "merge": False, "grads": False, "train": False,
        "description": "prompt tuning, 4 virtual token embeddings prepended to the input embeddings",
    },
]
CASE_BY_NAME = {c["name"]: c for c in CASES}

# How the trainable values are set (after get_peft_model and one warm-up forward, so that
# peft's own init, eager or lazy, is overwritten). One torch.Generator per case, seeded with
# the case seed, drawing for the trainable parameters in sorted-name order.
INIT = {
    "lora_A": "N(0, 1) / sqrt(in_features)",
    "lora_B": "N(0, 1) * 0.02 (nonzero, so the adapter changes the outputs)",
    "lora_magnitude_vector": "row norms ||W + scaling * B @ A||_2 (dim 1 of [out, in]) "
                             "* (1 + 0.1 * N(0, 1)), drawn after all A and B",
    "modules_to_save": "the copied module's weight + 0.1 * N(0, 1)",
    "prefix prompt_embeddings": "N(0, 1)",
    "prompt prompt_embeddings": "N(0, 1) * 0.5 (the scale of the base model's embeddings)",
}
LORA_B_STD = 0.02
MAGNITUDE_NOISE_STD = 0.1
MODULES_TO_SAVE_NOISE_STD = 0.1
PREFIX_STD = 1.0
PROMPT_STD = 0.5

ADAMW = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "steps": 10}

# Tolerances, relative to max(1, max |reference|).
BASE_REL_TOL = 1e-5      # base model from --models-dir against its own golden logits
RELOAD_REL_TOL = 1e-5    # adapter reloaded with PeftModel.from_pretrained vs in-memory model
MERGE_REL_TOL = 1e-5     # merge_and_unload logits vs adapter logits
MANUAL_REL_TOL = 1e-5    # hand-built prefix cache / prompt embeddings vs peft's forward
LOSS_REL_TOL = 1e-5      # float64 loss from the logits vs transformers' loss
EFFECT_MIN_ABS = 0.05    # the adapter must move some logit by at least this much

WARNINGS = []


def warn(message):
    WARNINGS.append(message)
    print("WARNING: " + message, flush=True)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def setup():
    """CPU, float32, one thread, deterministic algorithms (see make_goldens.setup_torch)."""
    mg.setup_torch()
    if torch.cuda.is_available():  # CUDA_VISIBLE_DEVICES="" above should make this impossible
        warn("CUDA is visible; everything here still runs on the CPU")


def versions():
    return mg.versions()


def read_base_golden(models_dir, base_name):
    """(golden.json dict, golden.safetensors tensors) of a base model folder."""
    from safetensors.torch import load_file
    folder = os.path.join(models_dir, base_name)
    path = os.path.join(folder, "golden.json")
    if not os.path.isfile(path):
        raise FileNotFoundError("%s is missing: --models-dir must be the folder make_goldens.py "
                                "wrote (e.g. src/test/resources/golden)" % path)
    with open(path, encoding="utf-8") as f:
        golden = json.load(f)
    tensors = load_file(os.path.join(folder, "golden.safetensors"))
    return golden, tensors


def load_base(models_dir, base_name):
    """The base model in float32 with eager attention, on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM
    folder = os.path.join(models_dir, base_name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError("no config.json in %s: the base model %r is not under --models-dir"
                                % (folder, base_name))
    kwargs = {"attn_implementation": "eager"}
    kwargs["dtype" if mg.transformers_major() >= 5 else "torch_dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise RuntimeError("%s loaded with parameter dtypes %s, expected float32" % (folder, dtypes))
    return model


def load_adapter(models_dir, base_name, adapter_dir, trainable):
    """PeftModel.from_pretrained on a freshly loaded base (from_pretrained changes the base in
    place, so every use gets its own). Returns (model, all warning texts, load problems): a
    warning about missing or unexpected keys is a load problem (a missing LoRA key would
    silently keep peft's init, B = 0)."""
    from peft import PeftModel
    base = load_base(models_dir, base_name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    texts = [str(w.message) for w in caught]
    problems = [t for t in texts if "missing" in t.lower() or "unexpected" in t.lower()]
    if trainable:
        model.train()
    else:
        model.eval()
    return model, texts, problems


def adapter_key_report(model, adapter_dir):
    """Compares the tensors of adapter_model.safetensors with what the loaded model holds
    (peft's own state-dict view, the one save_pretrained writes): same keys, same shapes,
    identical values. Returns a dict; its "problems" list is empty when all is well."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    in_file = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    in_model = get_peft_model_state_dict(model, save_embedding_layers=False)
    only_file = sorted(set(in_file) - set(in_model))
    only_model = sorted(set(in_model) - set(in_file))
    shape_mismatch, worst = [], 0.0
    for key in sorted(set(in_file) & set(in_model)):
        a = in_file[key].to(torch.float32)
        b = in_model[key].detach().to("cpu", torch.float32)
        if tuple(a.shape) != tuple(b.shape):
            shape_mismatch.append("%s: file %s, model %s" % (key, tuple(a.shape), tuple(b.shape)))
            continue
        worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    problems = []
    if only_file:
        problems.append("keys in the file that the model did not take: %s" % only_file)
    if only_model:
        problems.append("adapter keys the model has but the file lacks: %s" % only_model)
    if shape_mismatch:
        problems.append("shape mismatches: %s" % shape_mismatch)
    if worst != 0.0:
        problems.append("loaded values differ from the file by up to %g" % worst)
    return {
        "file_keys": len(in_file),
        "only_in_file": only_file,
        "only_in_model": only_model,
        "shape_mismatches": shape_mismatch,
        "value_max_abs_diff": worst,
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# Small numeric helpers
# ---------------------------------------------------------------------------------------------

def logits_single(model, ids):
    """[rows, vocab] float32 logits of one unpadded sequence (mask of ones)."""
    return mg.logits_single(model, ids)


def rel_diff(got, ref):
    """(max |got - ref|, tolerance scale max(1, max |ref|))."""
    if tuple(got.shape) != tuple(ref.shape):
        raise RuntimeError("shape %s vs reference %s" % (tuple(got.shape), tuple(ref.shape)))
    return float((got - ref).abs().max()), max(1.0, float(ref.abs().max()))


def within(got, ref, rel_tol):
    diff, scale = rel_diff(got, ref)
    return diff, diff <= rel_tol * scale


@torch.no_grad()
def model_loss(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return float(model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss)


def loss_f64(logits, ids, offset):
    """Mean over predicted tokens of -log softmax(logits[t])[labels[t+1]] in float64, where
    labels = [-100] * offset + ids (how peft extends the labels for prompt tuning).
    Returns (loss, number of predicted tokens)."""
    labels = [-100] * offset + list(ids)
    if len(labels) != logits.shape[0]:
        raise RuntimeError("%d logits rows for %d labels" % (logits.shape[0], len(labels)))
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    terms = [-float(logp[t, labels[t + 1]]) for t in range(len(labels) - 1) if labels[t + 1] != -100]
    return sum(terms) / len(terms), len(terms)


def saved_key(param_name):
    """In-memory peft parameter name -> the key save_pretrained writes: the adapter name
    ("default") is dropped, a DoRA magnitude loses its ".weight", a modules_to_save copy is
    saved under the wrapped module's path."""
    name = param_name.replace(".modules_to_save.default.", ".")
    name = name.replace(".default.", ".")
    if name.endswith(".default"):
        name = name[: -len(".default")]
    if name.endswith(".lora_magnitude_vector.weight"):
        name = name[: -len(".weight")]
    return name


def trainable_named(model):
    return sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad),
                  key=lambda item: item[0])


# ---------------------------------------------------------------------------------------------
# Building one adapter
# ---------------------------------------------------------------------------------------------

def peft_config_for(case):
    import peft
    cfg = dict(case["config"])
    if case["kind"] == "lora":
        return peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **cfg)
    if case["kind"] == "prefix":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", **cfg)
    if case["kind"] == "prompt":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", **cfg)
    raise ValueError("unknown case kind " + case["kind"])


@torch.no_grad()
def set_adapter_values(model, case):
    """Overwrites every trainable parameter from the case's seeded generator (INIT says how).
    Returns {saved key: rule} for golden.json."""
    g = torch.Generator().manual_seed(case["seed"])
    rules, magnitudes = {}, []
    for name, p in trainable_named(model):
        shape = tuple(p.shape)
        if ".lora_A." in name:
            p.copy_(torch.randn(shape, generator=g) / math.sqrt(shape[1]))
            rules[saved_key(name)] = "lora_A"
        elif ".lora_B." in name:
            p.copy_(torch.randn(shape, generator=g) * LORA_B_STD)
            rules[saved_key(name)] = "lora_B"
        elif "lora_magnitude_vector" in name:
            magnitudes.append((name, p))  # needs the final A and B: second pass
        elif ".modules_to_save." in name:
            p.add_(torch.randn(shape, generator=g) * MODULES_TO_SAVE_NOISE_STD)
            rules[saved_key(name)] = "modules_to_save"
        elif name.startswith("prompt_encoder.") and case["kind"] == "prefix":
            p.copy_(torch.randn(shape, generator=g) * PREFIX_STD)
            rules["prompt_embeddings"] = "prefix prompt_embeddings"
        elif name.startswith("prompt_encoder.") and case["kind"] == "prompt":
            p.copy_(torch.randn(shape, generator=g) * PROMPT_STD)
            rules["prompt_embeddings"] = "prompt prompt_embeddings"
        else:
            raise RuntimeError("trainable parameter %s %s has no init rule in this script"
                               % (name, shape))
    for name, p in magnitudes:
        module = model.get_submodule(name.split(".lora_magnitude_vector")[0])
        weight = module.get_base_layer().weight.to(torch.float32)
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        norm = torch.linalg.norm(weight + module.scaling["default"] * (b @ a), dim=1)
        if tuple(norm.shape) != tuple(p.shape):
            raise RuntimeError("%s: magnitude %s but weight norm %s"
                               % (name, tuple(p.shape), tuple(norm.shape)))
        p.copy_(norm * (1.0 + MAGNITUDE_NOISE_STD * torch.randn(tuple(p.shape), generator=g)))
        rules[saved_key(name)] = "lora_magnitude_vector"
    if not rules:
        raise RuntimeError("the peft model has no trainable parameters")
    return rules


def lora_scaling_check(model, case, problems):
    """The scaling peft uses per module, against alpha/r or alpha/sqrt(r)."""
    from peft.tuners.lora import LoraLayer
    cfg = case["config"]
    r, alpha = cfg["r"], cfg["lora_alpha"]
    expected = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    seen = sorted({float(m.scaling["default"]) for m in model.modules()
                   if isinstance(m, LoraLayer) and "default" in getattr(m, "scaling", {})})
    if seen != [expected]:
        problems.append("LoRA scaling in the model is %s, expected %s" % (seen, expected))
    return expected


def prefix_geometry(base_config):
    n_layers = base_config.num_hidden_layers
    n_heads = base_config.num_attention_heads
    n_kv = getattr(base_config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(base_config, "head_dim", None) or base_config.hidden_size // n_heads
    return n_layers, n_kv, head_dim


@torch.no_grad()
def prefix_manual_logits(base, prompt_embeddings, ids, position_start):
    """The prefix semantics written in the README, built by hand: prompt_embeddings [V, L*2*KV*D]
    viewed as [V, L, 2 (key, value), KV, D] become a KV cache (keys used as they are, no rope)
    in front of the sequence, whose tokens get positions position_start .. position_start+T-1."""
    from transformers import DynamicCache
    n_layers, n_kv, head_dim = prefix_geometry(base.config)
    n_virtual = prompt_embeddings.shape[0]
    kv = prompt_embeddings.view(1, n_virtual, n_layers * 2, n_kv, head_dim).permute(2, 0, 3, 1, 4)
    try:
        cache = DynamicCache(config=base.config)
    except TypeError:  # an older transformers without the config argument
        cache = DynamicCache()
    for layer in range(n_layers):
        cache.update(kv[2 * layer].contiguous(), kv[2 * layer + 1].contiguous(), layer)
    x = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones((1, n_virtual + len(ids)), dtype=torch.long)
    pos = torch.arange(position_start, position_start + len(ids), dtype=torch.long)[None]
    out = base(input_ids=x, attention_mask=mask, position_ids=pos, past_key_values=cache,
               use_cache=True)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def prompt_manual_logits(base, prompt_embeddings, ids):
    """Prompt tuning by hand: the virtual embeddings [V, hidden] concatenated in front of the
    token embeddings, positions 0 .. V+T-1, mask of ones."""
    x = torch.tensor([ids], dtype=torch.long)
    embeds = torch.cat([prompt_embeddings[None].to(torch.float32), base.get_input_embeddings()(x)], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return base(inputs_embeds=embeds, attention_mask=mask).logits[0].to(torch.float32)


def compute_grads(models_dir, case, adapter_dir, ids, problems):
    """One forward/backward of the reloaded adapter (is_trainable=True, train mode):
    loss = model(input_ids, labels=input_ids).loss. Returns (loss, {grad.<saved key>: grad})."""
    model, _, load_problems = load_adapter(models_dir, case["base"], adapter_dir, trainable=True)
    problems.extend("grads: " + p for p in load_problems)
    x = torch.tensor([ids], dtype=torch.long)
    loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
    loss.backward()
    grads = {}
    for name, p in trainable_named(model):
        if p.grad is None:
            problems.append("grads: %s got no gradient" % name)
            continue
        mg.check_finite("grad " + name, p.grad)
        grads["grad." + saved_key(name)] = p.grad.detach().to(torch.float32).clone()
    return float(loss), grads


def train_curve(models_dir, case, adapter_dir, ids, problems):
    """AdamW on the reloaded adapter, one fixed sequence, ADAMW["steps"] steps. Returns
    (losses before each step, loss after the last step, {trained.<saved key>: tensor})."""
    model, _, load_problems = load_adapter(models_dir, case["base"], adapter_dir, trainable=True)
    problems.extend("train: " + p for p in load_problems)
    named = trainable_named(model)
    opt = torch.optim.AdamW([p for _, p in named], lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"],
                            amsgrad=False, foreach=False)
    x = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(x)
    losses = []
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=x, attention_mask=mask, labels=x).loss
        losses.append(float(loss))
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(model(input_ids=x, attention_mask=mask, labels=x).loss)
    trained = {"trained." + saved_key(n): p.detach().to(torch.float32).clone() for n, p in named}
    if not all(math.isfinite(v) for v in losses + [final]):
        problems.append("train: non-finite loss %s / %s" % (losses, final))
    elif final >= losses[0]:
        warn("%s: the loss did not fall in %d AdamW steps (%g -> %g)"
             % (case["name"], ADAMW["steps"], losses[0], final))
    return losses, final, trained


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------

def make_case(case, models_dir, out_dir):
    from peft import get_peft_model
    from safetensors.torch import save_file

    name, base_name = case["name"], case["base"]
    started = time.time()
    problems, checks, tensors = [], {}, {}
    base_golden, base_tensors = read_base_golden(models_dir, base_name)
    prompts = [base_golden["prompts"][i] for i in PROMPT_INDICES]
    train_ids = base_golden["prompts"][TRAIN_PROMPT_INDEX]["input_ids"]

    # The base model must be the one the base golden describes.
    base = load_base(models_dir, base_name)
    base_logits = {}
    worst = 0.0
    for i, p in zip(PROMPT_INDICES, prompts):
        base_logits[i] = logits_single(base, p["input_ids"])
        diff, ok = within(base_logits[i], base_tensors["logits_%d" % i], BASE_REL_TOL)
        worst = max(worst, diff)
        if not ok:
            problems.append("base %s prompt %d differs from its golden by %g" % (base_name, i, diff))
    checks["base_max_abs_diff_vs_base_golden"] = worst
    base_config = copy.deepcopy(base.config)

    # Build with peft, warm up (DoRA may initialise lazily on the first forward), set values.
    model = get_peft_model(base, peft_config_for(case))
    model.eval()
    logits_single(model, prompts[0]["input_ids"])
    init_rules = set_adapter_values(model, case)
    scaling = lora_scaling_check(model, case, problems) if case["kind"] == "lora" else None

    tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % name, dir=out_dir)
    try:
        adapter_dir = os.path.join(tmp, "adapter")
        # adapter_config.json names the base by its folder name, not a path on this machine.
        model.peft_config["default"].base_model_name_or_path = base_name
        model.save_pretrained(adapter_dir, safe_serialization=True, save_embedding_layers=False)
        for required in ("adapter_config.json", "adapter_model.safetensors"):
            if not os.path.isfile(os.path.join(adapter_dir, required)):
                raise RuntimeError("save_pretrained wrote no %s (files: %s)"
                                   % (required, sorted(os.listdir(adapter_dir))))
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
            adapter_config = json.load(f)

        # Logits of the in-memory peft model.
        offset = case["config"]["num_virtual_tokens"] if case["kind"] == "prompt" else 0
        prompt_entries = []
        effect = 0.0
        for k, (i, p) in enumerate(zip(PROMPT_INDICES, prompts)):
            logits = logits_single(model, p["input_ids"])
            expected_rows = offset + len(p["input_ids"])
            if logits.shape[0] != expected_rows:
                raise RuntimeError("peft returned %d logits rows for %d tokens (expected %d)"
                                   % (logits.shape[0], len(p["input_ids"]), expected_rows))
            tensors["logits_%d" % k] = logits.clone()
            effect = max(effect, float((logits[offset:] - base_logits[i]).abs().max()))
            prompt_entries.append({
                "logits_key": "logits_%d" % k,
                "base_prompt_index": i,
                "text": p["text"],
                "input_ids": p["input_ids"],
                "num_tokens": len(p["input_ids"]),
                "logits_rows": expected_rows,
                "logits_row_offset": offset,
            })
        checks["adapter_effect_max_abs"] = effect
        if effect < EFFECT_MIN_ABS:
            warn("%s: the adapter moves the logits by only %g" % (name, effect))

        loss0 = model_loss(model, prompts[0]["input_ids"])
        loss0_f64, loss0_count = loss_f64(tensors["logits_0"], prompts[0]["input_ids"], offset)
        if abs(loss0 - loss0_f64) > LOSS_REL_TOL * max(1.0, abs(loss0_f64)):
            problems.append("loss_0 %r vs float64 %r" % (loss0, loss0_f64))

        # Hand-built semantics (what the README tells the Java side to do).
        extra = {}
        if case["kind"] == "prefix":
            extra["prefix"] = prefix_section(model, case, base_config, models_dir, prompts,
                                             tensors, checks, problems)
        if case["kind"] == "prompt":
            extra["prompt_tuning"] = prompt_section(model, case, base_config, models_dir, prompts,
                                                    tensors, checks, problems)

        # Reload from the saved files, as a user (and the Java side's peers) would.
        reloaded, load_texts, load_problems = load_adapter(models_dir, base_name, adapter_dir, False)
        problems.extend("reload: " + t for t in load_problems)
        report = adapter_key_report(reloaded, adapter_dir)
        problems.extend("reload: " + t for t in report["problems"])
        worst = 0.0
        for k, p in enumerate(prompts):
            diff, ok = within(logits_single(reloaded, p["input_ids"]), tensors["logits_%d" % k],
                              RELOAD_REL_TOL)
            worst = max(worst, diff)
            if not ok:
                problems.append("reloaded adapter: logits_%d differ by %g" % (k, diff))
        checks["reload_max_abs_diff"] = worst
        checks["reload_warnings"] = load_texts

        if case["merge"]:
            merged = reloaded.merge_and_unload()
            merged_logits = logits_single(merged, prompts[0]["input_ids"])
            tensors["logits_merged_0"] = merged_logits.clone()
            diff, ok = within(merged_logits, tensors["logits_0"], MERGE_REL_TOL)
            checks["merged_max_abs_diff"] = diff
            if not ok:
                problems.append("merge_and_unload logits differ from the adapter's by %g" % diff)
        del reloaded

        adapter_keys = set(mg.safetensors_index(os.path.join(adapter_dir, "adapter_model.safetensors")))
        grad_section = None
        if case["grads"]:
            loss, grads = compute_grads(models_dir, case, adapter_dir, train_ids, problems)
            keys = sorted(k[len("grad."):] for k in grads)
            if set(keys) != adapter_keys:
                problems.append("grad keys %s are not the adapter's keys %s"
                                % (sorted(set(keys) ^ adapter_keys), "(symmetric difference)"))
            tensors.update(grads)
            grad_section = {
                "input_ids": train_ids,
                "base_prompt_index": TRAIN_PROMPT_INDEX,
                "loss": loss,
                "keys": keys,
                "definition": "labels = input_ids; loss = model(input_ids, attention_mask=ones, "
                              "labels).loss (mean cross-entropy over the T-1 shifted tokens); "
                              "one backward from the saved adapter; golden.safetensors "
                              "grad.<adapter key> = d loss / d tensor",
            }
            if case["kind"] == "lora" and case["config"].get("use_dora"):
                grad_section["dora_weight_norm_detached"] = True
        train_section = None
        if case["train"]:
            losses, final, trained = train_curve(models_dir, case, adapter_dir, train_ids, problems)
            if grad_section is not None and abs(losses[0] - grad_section["loss"]) > 1e-6 * max(1.0, losses[0]):
                problems.append("train loss[0] %r differs from the grad loss %r"
                                % (losses[0], grad_section["loss"]))
            tensors.update(trained)
            train_section = {
                "optimizer": "torch.optim.AdamW",
                "lr": ADAMW["lr"], "betas": ADAMW["betas"], "eps": ADAMW["eps"],
                "weight_decay": ADAMW["weight_decay"], "amsgrad": False, "foreach": False,
                "steps": ADAMW["steps"],
                "schedule": "constant lr, no warmup, no gradient clipping, no accumulation",
                "input_ids": train_ids,
                "base_prompt_index": TRAIN_PROMPT_INDEX,
                "losses": losses,
                "final_loss": final,
                "trained_keys": sorted(k[len("trained."):] for k in trained),
                "definition": "start from the saved adapter; each step: zero grads, loss = "
                              "model(input_ids, labels=input_ids).loss, record it, backward, "
                              "AdamW step. losses[k] is the loss before step k; final_loss after "
                              "the last step; trained.<adapter key> the tensors after it",
            }

        for key, t in tensors.items():
            mg.check_finite(key, t)
        golden_st = os.path.join(tmp, "golden.safetensors")
        save_file(tensors, golden_st, metadata={"generator": GENERATOR, "case": name})
        golden = {
            "case": name,
            "description": case["description"],
            "base": base_name,
            "base_architecture": base_golden.get("architecture"),
            "peft_type": adapter_config.get("peft_type"),
            "kind": case["kind"],
            "case_config": case["config"],
            "seed": case["seed"],
            "init": INIT,
            "init_rules": init_rules,
            "versions": versions(),
            "compute": "CPU, float32, one thread, eager attention, eval mode for logits",
            "adapter_dir": "adapter",
            "adapter_files": sorted(os.listdir(adapter_dir)),
            "adapter_config": adapter_config,
            "adapter_tensors": mg.safetensors_index(os.path.join(adapter_dir, "adapter_model.safetensors")),
            "scaling": scaling,
            "prompts": prompt_entries,
            "loss_0": loss0,
            "loss_0_f64": loss0_f64,
            "loss_0_predicted_tokens": loss0_count,
            "loss_definition": "model(input_ids=prompt 0, labels=input_ids).loss through peft; "
                               "for prompt tuning peft prepends num_virtual_tokens labels of -100, "
                               "so the last virtual position predicts the BOS and T tokens count",
            "merged": case["merge"],
            "grad": grad_section,
            "train": train_section,
            "checks": checks,
            "problems": problems,
            "golden_tensors": mg.safetensors_index(golden_st),
        }
        golden.update(extra)
        mg.write_json_atomic(os.path.join(tmp, "golden.json"), golden)
        mg.replace_dir(tmp, os.path.join(out_dir, name))
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

    return {
        "name": name,
        "base": base_name,
        "peft_type": golden["peft_type"],
        "adapter_tensors": len(golden["adapter_tensors"]),
        "adapter_bytes": os.path.getsize(os.path.join(out_dir, name, "adapter", "adapter_model.safetensors")),
        "effect": checks["adapter_effect_max_abs"],
        "reload": checks["reload_max_abs_diff"],
        "merged": checks.get("merged_max_abs_diff"),
        "manual": checks.get("manual_max_abs_diff"),
        "loss_0": loss0,
        "grads": len(grad_section["keys"]) if grad_section else 0,
        "train": (train_section["losses"][0], train_section["final_loss"]) if train_section else None,
        "problems": problems,
        "seconds": time.time() - started,
    }


def prefix_section(model, case, base_config, models_dir, prompts, tensors, checks, problems):
    n_layers, n_kv, head_dim = prefix_geometry(base_config)
    n_virtual = case["config"]["num_virtual_tokens"]
    emb = model.prompt_encoder["default"].embedding.weight.detach().to(torch.float32).clone()
    expected = (n_virtual, n_layers * 2 * n_kv * head_dim)
    if tuple(emb.shape) != expected:
        problems.append("prefix prompt_embeddings %s, expected %s (num_key_value_heads not used?)"
                        % (tuple(emb.shape), expected))
        return {"prompt_embeddings_shape": list(emb.shape)}
    base = load_base(models_dir, case["base"])
    diffs = {}
    for start in (n_virtual, 0):
        worst, ok_all = 0.0, True
        for k, p in enumerate(prompts):
            diff, ok = within(prefix_manual_logits(base, emb, p["input_ids"], start),
                              tensors["logits_%d" % k], MANUAL_REL_TOL)
            worst, ok_all = max(worst, diff), ok_all and ok
        diffs[start] = (worst, ok_all)
    checks["prefix_manual_max_abs_diff_positions_from_num_virtual_tokens"] = diffs[n_virtual][0]
    checks["prefix_manual_max_abs_diff_positions_from_0"] = diffs[0][0]
    if diffs[n_virtual][1]:
        position_start = n_virtual
    elif diffs[0][1]:
        position_start = 0
        warn("%s: peft's prefix tokens start at position 0, not num_virtual_tokens" % case["name"])
    else:
        position_start = None
        problems.append("the hand-built prefix cache reproduces peft's logits with neither "
                        "position start (diffs %s)" % {k: v[0] for k, v in diffs.items()})
    checks["manual_max_abs_diff"] = diffs[position_start][0] if position_start is not None else None
    return {
        "num_virtual_tokens": n_virtual,
        "num_layers": n_layers,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "prompt_embeddings_shape": list(emb.shape),
        "layout": "prompt_embeddings[v, ((layer * 2 + j) * num_key_value_heads + h) * head_dim + d]; "
                  "j = 0: key, j = 1: value",
        "keys_rotated": False,
        "keys_note": "the keys go into the KV cache as they are (the cache holds post-rope keys), "
                     "so no rope is applied to them; the real tokens' q/k get rope at their positions",
        "position_start": position_start,
        "attention": "every real token attends all virtual tokens plus the causal real tokens; "
                     "the virtual tokens produce no logits (logits rows = T)",
    }


def prompt_section(model, case, base_config, models_dir, prompts, tensors, checks, problems):
    n_virtual = case["config"]["num_virtual_tokens"]
    emb = model.prompt_encoder["default"].embedding.weight.detach().to(torch.float32).clone()
    if tuple(emb.shape) != (n_virtual, base_config.hidden_size):
        problems.append("prompt_embeddings %s, expected %s"
                        % (tuple(emb.shape), (n_virtual, base_config.hidden_size)))
    base = load_base(models_dir, case["base"])
    worst = 0.0
    for k, p in enumerate(prompts):
        diff, ok = within(prompt_manual_logits(base, emb, p["input_ids"]),
                          tensors["logits_%d" % k], MANUAL_REL_TOL)
        worst = max(worst, diff)
        if not ok:
            problems.append("hand-built prompt tuning differs from peft's logits_%d by %g" % (k, diff))
    checks["manual_max_abs_diff"] = worst
    return {
        "num_virtual_tokens": n_virtual,
        "token_dim": base_config.hidden_size,
        "prompt_embeddings_shape": list(emb.shape),
        "position_start": 0,
        "logits_row_offset": n_virtual,
        "definition": "inputs_embeds = concat(prompt_embeddings, embed_tokens(input_ids)); "
                      "positions 0 .. V+T-1; mask of ones; logits rows = V + T, the first V rows "
                      "belong to the virtual tokens",
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def fmt(x, spec="%.3g"):
    return "-" if x is None else spec % x


def print_summary(rows):
    print()
    head = "%-27s %-10s %-14s %4s %7s %8s %9s %9s %9s %9s %5s %17s %5s" % (
        "case", "base", "peft_type", "keys", "bytes", "effect", "reload", "merged", "manual",
        "loss_0", "grads", "train first->last", "ok")
    print(head)
    print("-" * len(head))
    for r in rows:
        train = "%.4f->%.4f" % r["train"] if r["train"] else "-"
        print("%-27s %-10s %-14s %4d %7d %8.3g %9s %9s %9s %9.5f %5d %17s %5s" % (
            r["name"], r["base"], r["peft_type"], r["adapter_tensors"], r["adapter_bytes"],
            r["effect"], fmt(r["reload"]), fmt(r["merged"]), fmt(r["manual"]), r["loss_0"],
            r["grads"], train, "yes" if not r["problems"] else "NO"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default="src/test/resources/golden",
                    help="folder with the base models make_goldens.py wrote")
    ap.add_argument("--out", required=True, help="output folder, e.g. /tmp/peft-golden")
    ap.add_argument("--cases", nargs="*", default=[c["name"] for c in CASES],
                    choices=[c["name"] for c in CASES], help="subset of cases to make")
    args = ap.parse_args(argv)

    setup()
    models_dir = os.path.abspath(args.models_dir)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    print("versions:", json.dumps(versions(), sort_keys=True), flush=True)

    rows, failures, made = [], [], []
    for name in args.cases:
        print("making %s ..." % name, flush=True)
        try:
            row = make_case(CASE_BY_NAME[name], models_dir, out_dir)
            rows.append(row)
            made.append({"name": name, "base": row["base"], "peft_type": row["peft_type"],
                         "dir": name, "problems": row["problems"]})
            failures.extend("%s: %s" % (name, p) for p in row["problems"])
        except Exception as e:  # one case failing must not cost the others
            traceback.print_exc()
            failures.append("%s: not made: %r" % (name, e))

    mg.write_json_atomic(os.path.join(out_dir, "manifest.json"), {
        "generator": GENERATOR,
        "models_dir": args.models_dir,
        "cases": made,
        "versions": versions(),
        "failures": failures,
        "warnings": WARNINGS + mg.WARNINGS,
    })
    print_summary(rows)
    all_warnings = WARNINGS + mg.WARNINGS
    if all_warnings:
        print("\n%d warning(s):" % len(all_warnings))
        for w in all_warnings:
            print("  - " + w)
    if failures:
        print("\nFAILED:")
        for f in failures:
            print("  - " + f)
        return 1
    print("\nall %d cases made and checked: %s" % (len(made), ", ".join(m["name"] for m in made)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
