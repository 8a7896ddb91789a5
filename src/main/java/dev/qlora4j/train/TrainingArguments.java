package dev.qlora4j.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.Consumer;

/**
 * transformers' TrainingArguments (plus TRL's SFTConfig data fields) with the same names and
 * defaults. Keys in a JSON config are transformers' own snake_case names ("learning_rate",
 * "per_device_train_batch_size" ...); {@link #parse} reads them, warns about keys it does not use
 * and validates the result with messages that name the key.
 *
 * <p>Deviations, on purpose: {@code max_seq_length} (TRL's max_length, also accepted under that
 * name) defaults to 1024 as TRL's; {@code assistant_only_loss} defaults to true (TRL: false)
 * because chat fine-tuning should not learn to write the user's turns; {@code eval_steps},
 * {@code logging_steps} and {@code save_steps} below 1 are a fraction of max_steps, as in
 * transformers.
 *
 * @param outputDir            output_dir: checkpoints, final adapter, metrics (required)
 * @param evalSteps            eval_steps, null = logging_steps (transformers' rule)
 * @param saveTotalLimit       save_total_limit, null = keep every checkpoint
 * @param dataSeed             data_seed, null = seed
 * @param resumeFromCheckpoint resume_from_checkpoint: null, "latest" (newest checkpoint-N in output_dir) or a folder
 * @param offloadActivations   offload_activations (qlora4j's own key): with gradient checkpointing, each layer's
 *                             checkpointed input waits for the backward in pinned host memory instead of GPU memory
 * @param checkpointKeepAttention checkpoint_keep_attention (qlora4j's own key; true, false, or null = auto, the
 *                             default): with gradient checkpointing, each layer's attention result (out + lse) is kept
 *                             too, so the backward's recompute skips the attention forward (same loss and gradients,
 *                             bit for bit; about 16 MiB more per Llama-7B layer at 2048 tokens). Auto keeps it when all
 *                             layers' results take at most 1 GiB, or 1/32 of the GPU's memory when that is more
 *                             (TransformerLM.setCheckpointKeepAttention). Ignored with offload_activations.
 * @param checkpointKeepResidual checkpoint_keep_residual (qlora4j's own key; true, false, or null = auto, the default):
 *                             with gradient checkpointing, each layer's attention block output (x + o(attention)) is
 *                             kept too, so the recompute skips the o projection (same results, bit for bit; 16 MiB more
 *                             per Llama-7B layer at 2048 tokens). Auto keeps it when it fits the same budget beside the
 *                             kept attention results (TransformerLM.setCheckpointKeepResidual). Ignored with
 *                             offload_activations.
 * @param embeddingInHostMemory embedding_in_host_memory (qlora4j's own key, default false): on a GPU, the frozen token
 *                             embedding table stays in page-locked host memory and the lookup reads a step's rows over
 *                             the bus (TransformerLM.setEmbeddingInHostMemory): 250 MiB of GPU memory back for Llama-7B,
 *                             1 GiB for Llama 3's vocabulary, ~1 ms per 2,048 tokens. Not with a tied LM head.
 * @param checkpointKeepDequantized checkpoint_keep_dequantized (qlora4j's own key, default true): with gradient
 *                             checkpointing on a GPU, the 4-bit weights a layer's recompute dequantizes are kept for that
 *                             layer's backward instead of being dequantized again (up to 512 MiB, one layer at a time;
 *                             same loss and gradients; TransformerLM.setCheckpointKeepDequantized). false frees that memory.
 */
public record TrainingArguments(
        Path outputDir,
        int perDeviceTrainBatchSize,
        int perDeviceEvalBatchSize,
        int gradientAccumulationSteps,
        double numTrainEpochs,
        int maxSteps,
        double learningRate,
        int warmupSteps,
        double warmupRatio,
        String lrSchedulerType,
        double weightDecay,
        double adamBeta1,
        double adamBeta2,
        double adamEpsilon,
        double maxGradNorm,
        String optim,
        String loggingStrategy,
        double loggingSteps,
        boolean loggingFirstStep,
        String evalStrategy,
        Double evalSteps,
        String saveStrategy,
        double saveSteps,
        Integer saveTotalLimit,
        boolean bf16,
        long seed,
        Long dataSeed,
        boolean gradientCheckpointing,
        String resumeFromCheckpoint,
        int maxSeqLength,
        boolean packing,
        boolean completionOnlyLoss,
        boolean assistantOnlyLoss,
        boolean offloadActivations,
        Boolean checkpointKeepAttention,
        boolean checkpointKeepDequantized,
        Boolean checkpointKeepResidual,
        boolean embeddingInHostMemory) {

    public static final List<String> OPTIMIZERS =
            List.of("adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd");
    public static final List<String> SCHEDULERS = List.of("linear", "cosine", "constant", "constant_with_warmup");
    public static final List<String> INTERVALS = List.of("no", "steps", "epoch");

    private static final ObjectMapper MAPPER = new ObjectMapper();

    /** Every key this record reads, with its default (null = no default). Order is the record's. */
    private static final Map<String, Object> DEFAULTS = defaults();

    /**
     * transformers / TRL keys that are valid there but change nothing here (a config written for
     * transformers loads with one notice each instead of an "unknown key" warning).
     */
    private static final List<String> IGNORED = List.of(
            "overwrite_output_dir", "do_train", "do_eval", "do_predict", "report_to", "run_name", "logging_dir",
            "dataloader_num_workers", "dataloader_pin_memory", "dataloader_drop_last", "remove_unused_columns",
            "push_to_hub", "hub_model_id", "ddp_find_unused_parameters", "group_by_length", "disable_tqdm",
            "log_level", "save_safetensors", "tf32", "torch_compile", "gradient_checkpointing_kwargs",
            "dataset_text_field", "include_num_input_tokens_seen", "label_names", "save_only_model",
            "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "eval_delay",
            "prediction_loss_only", "optim_args", "lr_scheduler_kwargs", "auto_find_batch_size", "local_rank",
            "dataset_num_proc", "eos_token", "pad_token", "padding_free", "eval_packing", "packing_strategy");

    /**
     * A config file's adapter: an object of peft's adapter_config.json keys (e.g. {"peft_type":
     * "PREFIX_TUNING", "num_virtual_tokens": 20}) that the train command reads; not a TrainingArguments key.
     */
    public static final String PEFT_CONFIG_KEY = "peft_config";

    /** Old or TRL names accepted for a key of this record. */
    private static final Map<String, String> ALIASES = Map.of(
            "evaluation_strategy", "eval_strategy",
            "max_length", "max_seq_length");

    public TrainingArguments {
        lrSchedulerType = lower(lrSchedulerType);
        optim = lower(optim);
        loggingStrategy = lower(loggingStrategy);
        evalStrategy = lower(evalStrategy);
        saveStrategy = lower(saveStrategy);
        validate(outputDir, perDeviceTrainBatchSize, perDeviceEvalBatchSize, gradientAccumulationSteps, numTrainEpochs, maxSteps,
                learningRate, warmupSteps, warmupRatio, lrSchedulerType, weightDecay, adamBeta1, adamBeta2, adamEpsilon,
                maxGradNorm, optim, loggingStrategy, loggingSteps, evalStrategy, evalSteps, saveStrategy, saveSteps,
                saveTotalLimit, maxSeqLength);
        if (offloadActivations && !gradientCheckpointing) {
            throw new IllegalArgumentException("offload_activations moves the inputs gradient checkpointing keeps: set "
                    + "gradient_checkpointing true too (--gradient-checkpointing)");
        }
    }

    private static String lower(String s) { return s == null ? null : s.toLowerCase(Locale.ROOT); }

    private static Map<String, Object> defaults() {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("output_dir", null);
        d.put("per_device_train_batch_size", 8);
        d.put("per_device_eval_batch_size", 8);
        d.put("gradient_accumulation_steps", 1);
        d.put("num_train_epochs", 3.0);
        d.put("max_steps", -1);
        d.put("learning_rate", 5e-5);
        d.put("warmup_steps", 0);
        d.put("warmup_ratio", 0.0);
        d.put("lr_scheduler_type", "linear");
        d.put("weight_decay", 0.0);
        d.put("adam_beta1", 0.9);
        d.put("adam_beta2", 0.999);
        d.put("adam_epsilon", 1e-8);
        d.put("max_grad_norm", 1.0);
        d.put("optim", "adamw_torch");
        d.put("logging_strategy", "steps");
        d.put("logging_steps", 500.0);
        d.put("logging_first_step", false);
        d.put("eval_strategy", "no");
        d.put("eval_steps", null);
        d.put("save_strategy", "steps");
        d.put("save_steps", 500.0);
        d.put("save_total_limit", null);
        d.put("bf16", false);
        d.put("seed", 42L);
        d.put("data_seed", null);
        d.put("gradient_checkpointing", false);
        d.put("resume_from_checkpoint", null);
        d.put("max_seq_length", 1024);
        d.put("packing", false);
        d.put("completion_only_loss", true);
        d.put("assistant_only_loss", true);
        d.put("offload_activations", false);
        d.put("checkpoint_keep_attention", null);
        d.put("checkpoint_keep_dequantized", true);
        d.put("checkpoint_keep_residual", null);
        d.put("embedding_in_host_memory", false);
        return d;
    }

    /** The snake_case keys {@link #parse} understands (aliases not included). */
    public static List<String> keys() { return List.copyOf(DEFAULTS.keySet()); }

    /** All defaults with the given output_dir. */
    public static TrainingArguments defaults(Path outputDir) {
        return of(Map.of("output_dir", outputDir.toString()));
    }

    /** From key/value pairs with transformers' names (values: numbers, booleans, strings); unknown keys fail. */
    public static TrainingArguments of(Map<String, ?> entries) {
        return parse(MAPPER.valueToTree(entries), "arguments", null);
    }

    /**
     * Reads a JSON config file (transformers' names), then applies {@code overrides} (e.g. command
     * line flags, same names) on top. Unknown keys go to {@code warnings}, they do not fail.
     */
    public static TrainingArguments load(Path configFile, Map<String, ?> overrides, Consumer<String> warnings) {
        ObjectNode merged = MAPPER.createObjectNode();
        String source = "arguments";
        if (configFile != null) {
            source = configFile.toString();
            JsonNode file;
            try {
                file = MAPPER.readTree(Files.readString(configFile));
            } catch (java.nio.file.NoSuchFileException e) {
                throw new IllegalArgumentException("training config " + configFile + " does not exist: pass an existing JSON file to --config");
            } catch (IOException e) {
                if (e instanceof com.fasterxml.jackson.core.JsonProcessingException j) {
                    throw new IllegalArgumentException(configFile + " is not valid JSON (line " + j.getLocation().getLineNr()
                            + "): " + j.getOriginalMessage() + "; it must be one JSON object of TrainingArguments keys");
                }
                throw new UncheckedIOException("cannot read " + configFile + ": " + e.getMessage(), e);
            }
            if (file == null || !file.isObject()) {
                throw new IllegalArgumentException(configFile + " must hold one JSON object of TrainingArguments keys, e.g. {\"learning_rate\": 2e-4}");
            }
            merged.setAll((ObjectNode) file);
        }
        if (overrides != null) {
            ObjectNode o = MAPPER.valueToTree(overrides);
            o.properties().forEach(e -> {
                if (!e.getValue().isNull()) merged.set(canonical(e.getKey()), e.getValue());
            });
        }
        return parse(merged, source, warnings);
    }

    private static String canonical(String key) {
        return ALIASES.getOrDefault(key, key);
    }

    /**
     * Parses one JSON object of transformers' keys; {@code source} names it in messages. Keys that
     * are unknown or unused go to {@code warnings}; with null warnings they are errors.
     */
    public static TrainingArguments parse(JsonNode json, String source, Consumer<String> warnings) {
        Consumer<String> unknown = warnings != null ? warnings : msg -> {
            throw new IllegalArgumentException(msg);
        };
        Consumer<String> notice = warnings != null ? warnings : msg -> { };
        Map<String, JsonNode> values = new LinkedHashMap<>();
        for (var e : json.properties()) {
            String key = e.getKey();
            String canon = canonical(key);
            if (!canon.equals(key)) {
                notice.accept(source + ": \"" + key + "\" is read as \"" + canon + "\" (its current name)");
            }
            if (DEFAULTS.containsKey(canon)) {
                values.put(canon, e.getValue());
            } else if (canon.equals(PEFT_CONFIG_KEY)) {
                // the adapter's settings: read by the train command (TrainCommand.configPeft)
            } else if (IGNORED.contains(canon)) {
                unknown.accept(source + ": \"" + key + "\" is a transformers setting qlora4j does not use; ignored");
            } else {
                unknown.accept(source + ": unknown key \"" + key + "\" ignored" + suggestion(canon));
            }
        }
        Reader r = new Reader(values, source);
        Object resume = values.containsKey("resume_from_checkpoint") && values.get("resume_from_checkpoint").isBoolean()
                ? (values.get("resume_from_checkpoint").asBoolean() ? "latest" : null)
                : r.str("resume_from_checkpoint");
        String out = r.str("output_dir");
        if (out == null || out.isBlank()) {
            throw new IllegalArgumentException(source + ": \"output_dir\" is required (the folder for checkpoints, the adapter and metrics)");
        }
        return new TrainingArguments(Path.of(out),
                r.integer("per_device_train_batch_size"), r.integer("per_device_eval_batch_size"),
                r.integer("gradient_accumulation_steps"), r.number("num_train_epochs"), r.integer("max_steps"),
                r.number("learning_rate"), r.integer("warmup_steps"), r.number("warmup_ratio"), r.str("lr_scheduler_type"),
                r.number("weight_decay"), r.number("adam_beta1"), r.number("adam_beta2"), r.number("adam_epsilon"),
                r.number("max_grad_norm"), r.str("optim"), r.str("logging_strategy"), r.number("logging_steps"),
                r.bool("logging_first_step"), r.str("eval_strategy"), r.optNumber("eval_steps"), r.str("save_strategy"),
                r.number("save_steps"), r.optInteger("save_total_limit"), r.bool("bf16"), r.longValue("seed"),
                r.optLong("data_seed"), r.bool("gradient_checkpointing"), (String) resume, r.integer("max_seq_length"),
                r.bool("packing"), r.bool("completion_only_loss"), r.bool("assistant_only_loss"), r.bool("offload_activations"),
                r.optBool("checkpoint_keep_attention"), r.bool("checkpoint_keep_dequantized"), r.optBool("checkpoint_keep_residual"),
                r.bool("embedding_in_host_memory"));
    }

    private static String suggestion(String key) {
        String best = null;
        int bestD = Integer.MAX_VALUE;
        for (String k : DEFAULTS.keySet()) {
            int d = editDistance(key, k);
            if (d < bestD) {
                bestD = d;
                best = k;
            }
        }
        return bestD <= Math.max(2, key.length() / 4) ? " (did you mean \"" + best + "\"?)" : "";
    }

    private static int editDistance(String a, String b) {
        int[] prev = new int[b.length() + 1], cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) prev[j] = j;
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                cur[j] = Math.min(prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1), Math.min(prev[j] + 1, cur[j - 1] + 1));
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    /** Typed access to the parsed values with defaults and messages naming source and key. */
    private record Reader(Map<String, JsonNode> values, String source) {
        private JsonNode node(String key) {
            JsonNode n = values.get(key);
            return n == null || n.isNull() ? null : n;
        }

        private IllegalArgumentException bad(String key, String what, JsonNode n) {
            return new IllegalArgumentException(source + ": \"" + key + "\" must be " + what + ", got " + n);
        }

        String str(String key) {
            JsonNode n = node(key);
            if (n == null) return (String) DEFAULTS.get(key);
            if (!n.isTextual()) throw bad(key, "a string", n);
            return n.asText();
        }

        double number(String key) {
            Double d = optNumber(key);
            return d != null ? d : ((Number) DEFAULTS.get(key)).doubleValue();
        }

        Double optNumber(String key) {
            JsonNode n = node(key);
            if (n == null) return DEFAULTS.get(key) == null ? null : ((Number) DEFAULTS.get(key)).doubleValue();
            if (n.isNumber()) return n.asDouble();
            if (n.isTextual()) {
                try {
                    return Double.parseDouble(n.asText().strip()); // "2e-4" written as a string, as YAML users do
                } catch (NumberFormatException e) {
                    throw bad(key, "a number", n);
                }
            }
            throw bad(key, "a number", n);
        }

        int integer(String key) {
            Integer i = optInteger(key);
            return i != null ? i : ((Number) DEFAULTS.get(key)).intValue();
        }

        Integer optInteger(String key) {
            Long l = optLong(key);
            if (l == null) return null;
            if (l != l.intValue()) throw bad(key, "an integer in int range", node(key));
            return l.intValue();
        }

        long longValue(String key) {
            Long l = optLong(key);
            return l != null ? l : ((Number) DEFAULTS.get(key)).longValue();
        }

        Long optLong(String key) {
            JsonNode n = node(key);
            if (n == null) return DEFAULTS.get(key) == null ? null : ((Number) DEFAULTS.get(key)).longValue();
            if (n.isIntegralNumber()) return n.asLong();
            if (n.isNumber() && n.asDouble() == Math.rint(n.asDouble())) return (long) n.asDouble();
            if (n.isTextual()) {
                try {
                    return Long.parseLong(n.asText().strip());
                } catch (NumberFormatException e) {
                    throw bad(key, "an integer", n);
                }
            }
            throw bad(key, "an integer", n);
        }

        boolean bool(String key) {
            Boolean b = optBool(key);
            if (b == null) throw bad(key, "true or false", node(key));
            return b;
        }

        /** true, false, or null (JSON null, or absent with a null default). */
        Boolean optBool(String key) {
            JsonNode n = node(key);
            if (n == null) return (Boolean) DEFAULTS.get(key);   // absent or JSON null: the default (null = auto where allowed)
            if (n.isBoolean()) return n.asBoolean();
            if (n.isTextual() && (n.asText().equalsIgnoreCase("true") || n.asText().equalsIgnoreCase("false"))) {
                return Boolean.parseBoolean(n.asText());
            }
            throw bad(key, "true or false", n);
        }
    }

    private static void validate(Path outputDir, int trainBs, int evalBs, int ga, double epochs, int maxSteps, double lr,
                                 int warmupSteps, double warmupRatio, String scheduler, double wd, double b1, double b2,
                                 double eps, double maxGradNorm, String optim, String logging, double loggingSteps,
                                 String eval, Double evalSteps, String save, double saveSteps, Integer saveTotalLimit,
                                 int maxSeqLength) {
        if (outputDir == null) throw new IllegalArgumentException("output_dir is required (the folder for checkpoints, the adapter and metrics)");
        positive("per_device_train_batch_size", trainBs);
        positive("per_device_eval_batch_size", evalBs);
        positive("gradient_accumulation_steps", ga);
        if (maxSteps <= 0 && !(epochs > 0)) {
            throw new IllegalArgumentException("num_train_epochs must be > 0 when max_steps is not set (got num_train_epochs "
                    + epochs + ", max_steps " + maxSteps + "): set one of them");
        }
        if (!(lr >= 0) || Double.isInfinite(lr)) throw new IllegalArgumentException("learning_rate must be a finite number >= 0, got " + lr);
        if (warmupSteps < 0) throw new IllegalArgumentException("warmup_steps must be >= 0, got " + warmupSteps);
        if (!(warmupRatio >= 0 && warmupRatio <= 1)) throw new IllegalArgumentException("warmup_ratio must lie in [0, 1], got " + warmupRatio);
        oneOf("lr_scheduler_type", scheduler, SCHEDULERS);
        if (!(wd >= 0)) throw new IllegalArgumentException("weight_decay must be >= 0, got " + wd);
        if (!(b1 >= 0 && b1 < 1)) throw new IllegalArgumentException("adam_beta1 must lie in [0, 1), got " + b1);
        if (!(b2 >= 0 && b2 < 1)) throw new IllegalArgumentException("adam_beta2 must lie in [0, 1), got " + b2);
        if (!(eps >= 0)) throw new IllegalArgumentException("adam_epsilon must be >= 0, got " + eps);
        if (!(maxGradNorm >= 0)) throw new IllegalArgumentException("max_grad_norm must be >= 0 (0 turns clipping off), got " + maxGradNorm);
        oneOf("optim", optim, OPTIMIZERS);
        oneOf("logging_strategy", logging, INTERVALS);
        oneOf("eval_strategy", eval, INTERVALS);
        if ("best".equals(save)) {
            throw new IllegalArgumentException("save_strategy \"best\" needs metric_for_best_model, which qlora4j does not support: use \"steps\" or \"epoch\"");
        }
        oneOf("save_strategy", save, INTERVALS);
        if (logging.equals("steps")) interval("logging_steps", loggingSteps);
        if (eval.equals("steps")) {
            double e = evalSteps != null ? evalSteps : loggingSteps;
            if (!(e > 0)) {
                throw new IllegalArgumentException("eval_strategy \"steps\" requires eval_steps > 0 (or logging_steps > 0, which it defaults to)");
            }
            interval("eval_steps", e);
        }
        if (save.equals("steps")) interval("save_steps", saveSteps);
        if (saveTotalLimit != null && saveTotalLimit < 1) {
            throw new IllegalArgumentException("save_total_limit must be >= 1 (or left unset to keep every checkpoint), got " + saveTotalLimit);
        }
        if (maxSeqLength < 2) throw new IllegalArgumentException("max_seq_length must be >= 2 (a token and the next one to predict), got " + maxSeqLength);
    }

    private static void positive(String key, int v) {
        if (v < 1) throw new IllegalArgumentException(key + " must be >= 1, got " + v);
    }

    private static void oneOf(String key, String v, List<String> allowed) {
        if (v == null || !allowed.contains(v)) throw new IllegalArgumentException(key + " \"" + v + "\" is not supported; use one of " + allowed);
    }

    /** transformers' rule for *_steps: a fraction of the run when < 1, else a whole number of steps. */
    private static void interval(String key, double v) {
        if (!(v > 0)) throw new IllegalArgumentException(key + " must be > 0 (a step count, or a fraction of max_steps below 1), got " + v);
        if (v > 1 && v != Math.rint(v)) throw new IllegalArgumentException(key + " must be an integer if bigger than 1, got " + v);
    }

    /** *_steps as a step count for a run of maxSteps optimizer steps (fractions rounded up, as transformers). */
    static long resolveSteps(double v, long maxSteps) {
        return v < 1 ? Math.max(1, (long) Math.ceil(maxSteps * v)) : (long) v;
    }

    /** eval_steps as given, else logging_steps. */
    public double evalStepsOrLogging() { return evalSteps != null ? evalSteps : loggingSteps; }

    /** data_seed, else seed: the seed of the shuffling order. */
    public long dataSeedOrSeed() { return dataSeed != null ? dataSeed : seed; }

    /** Examples per optimizer step (one device): per_device_train_batch_size x gradient_accumulation_steps. */
    public int totalTrainBatchSize() { return perDeviceTrainBatchSize * gradientAccumulationSteps; }

    /** The arguments as transformers' snake_case JSON object (training_args.json in checkpoints). */
    public Map<String, Object> toMap() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("output_dir", outputDir.toString());
        m.put("per_device_train_batch_size", perDeviceTrainBatchSize);
        m.put("per_device_eval_batch_size", perDeviceEvalBatchSize);
        m.put("gradient_accumulation_steps", gradientAccumulationSteps);
        m.put("num_train_epochs", numTrainEpochs);
        m.put("max_steps", maxSteps);
        m.put("learning_rate", learningRate);
        m.put("warmup_steps", warmupSteps);
        m.put("warmup_ratio", warmupRatio);
        m.put("lr_scheduler_type", lrSchedulerType);
        m.put("weight_decay", weightDecay);
        m.put("adam_beta1", adamBeta1);
        m.put("adam_beta2", adamBeta2);
        m.put("adam_epsilon", adamEpsilon);
        m.put("max_grad_norm", maxGradNorm);
        m.put("optim", optim);
        m.put("logging_strategy", loggingStrategy);
        m.put("logging_steps", loggingSteps);
        m.put("logging_first_step", loggingFirstStep);
        m.put("eval_strategy", evalStrategy);
        m.put("eval_steps", evalSteps);
        m.put("save_strategy", saveStrategy);
        m.put("save_steps", saveSteps);
        m.put("save_total_limit", saveTotalLimit);
        m.put("bf16", bf16);
        m.put("seed", seed);
        m.put("data_seed", dataSeed);
        m.put("gradient_checkpointing", gradientCheckpointing);
        m.put("resume_from_checkpoint", resumeFromCheckpoint);
        m.put("max_seq_length", maxSeqLength);
        m.put("packing", packing);
        m.put("completion_only_loss", completionOnlyLoss);
        m.put("assistant_only_loss", assistantOnlyLoss);
        m.put("offload_activations", offloadActivations);
        m.put("checkpoint_keep_attention", checkpointKeepAttention);
        m.put("checkpoint_keep_dequantized", checkpointKeepDequantized);
        m.put("checkpoint_keep_residual", checkpointKeepResidual);
        m.put("embedding_in_host_memory", embeddingInHostMemory);
        return m;
    }

    /** A copy with some keys changed (transformers' names), validated again. */
    public TrainingArguments with(Map<String, ?> changes) {
        Map<String, Object> m = toMap();
        changes.forEach((k, v) -> {
            String c = canonical(k);
            if (!DEFAULTS.containsKey(c)) throw new IllegalArgumentException("unknown TrainingArguments key \"" + k + "\"" + suggestion(c));
            m.put(c, v);
        });
        m.values().removeIf(java.util.Objects::isNull);
        return of(m);
    }
}
