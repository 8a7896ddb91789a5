package dev.qlora4j.cli;

import dev.qlora4j.CausalLM;
import dev.qlora4j.io.tokenizer.Tokenizer;
import dev.qlora4j.peft.config.BottleneckConfig;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.peft.prefix.TrainablePrefixTuning;
import dev.qlora4j.peft.prefix.TrainablePromptTuning;
import dev.qlora4j.train.PrefixTuningTrainableModel;
import dev.qlora4j.train.PromptTuningTrainableModel;
import dev.qlora4j.peft.config.TargetModules;
import dev.qlora4j.train.JsonlDataset;
import dev.qlora4j.train.ProgressReporter;
import dev.qlora4j.train.TrainableModel;
import dev.qlora4j.train.PeftTrainableModel;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.train.Trainer;
import dev.qlora4j.train.TrainingArguments;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.function.Supplier;

/**
 * qlora4j train: fine-tunes an adapter on a JSONL dataset (TRL formats: text, prompt/completion,
 * messages). Training settings are transformers' TrainingArguments: from --config train.json
 * (transformers' key names) with flags on top (the same names in kebab case).
 */
@Command(name = "train", mixinStandardHelpOptions = true, sortOptions = false,
        description = "Fine-tune an adapter (LoRA, DoRA, bottleneck, prefix or prompt tuning) on a JSONL dataset.")
public final class TrainCommand implements Callable<Integer> {
    @Mixin ModelOptions modelOptions;

    @Option(names = "--data", paramLabel = "FILE.jsonl", required = true,
            description = "Training data: one {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"} object per line.")
    Path data;

    @Option(names = "--eval-data", paramLabel = "FILE.jsonl", description = "Evaluation data, same formats.")
    Path evalData;

    @Option(names = {"--output", "--output-dir"}, paramLabel = "DIR", description = "output_dir: checkpoints, adapter, metrics.")
    Path output;

    @Option(names = "--config", paramLabel = "train.json", description = "TrainingArguments as JSON (transformers' key names); flags override it.")
    Path config;

    // adapter
    @Option(names = "--adapter-type", paramLabel = "lora|dora|bottleneck|prefix|prompt",
            description = "Adapter kind (default: the config's \"peft_config\" if it has one, else lora).")
    String adapterType;

    @Option(names = "--lora-r", defaultValue = "8", description = "LoRA rank (default: ${DEFAULT-VALUE}, peft's).") int loraR;
    @Option(names = "--lora-alpha", defaultValue = "8", description = "LoRA alpha (default: ${DEFAULT-VALUE}, peft's).") double loraAlpha;
    @Option(names = "--lora-dropout", defaultValue = "0.0", description = "LoRA dropout (default: ${DEFAULT-VALUE}).") double loraDropout;
    @Option(names = "--use-rslora", description = "Rank-stabilized LoRA scaling alpha/sqrt(r).") boolean useRslora;

    @Option(names = "--target-modules", paramLabel = "q_proj,v_proj|all-linear", split = ",",
            description = "Modules that get adapters (default: peft's default for the model type).")
    List<String> targetModules;

    @Option(names = "--bottleneck-reduction-factor", defaultValue = "16",
            description = "Bottleneck size = hidden_size / this (default: ${DEFAULT-VALUE}).") int reductionFactor;

    @Option(names = "--num-virtual-tokens", description = "Prefix/prompt tuning: virtual tokens (default: 20).")
    Integer numVirtualTokens;

    @Option(names = "--prefix-projection", negatable = true,
            description = "Prefix tuning: produce the prefix with peft's two-layer MLP (saved as its output).")
    Boolean prefixProjection;

    @Option(names = "--encoder-hidden-size", description = "Prefix tuning: hidden size of the projection MLP (default: token_dim).")
    Integer encoderHiddenSize;

    @Option(names = "--prompt-tuning-init", paramLabel = "TEXT|RANDOM|SAMPLE_VOCAB",
            description = "Prompt tuning: initial virtual token embeddings (default: RANDOM, peft's).")
    String promptTuningInit;

    @Option(names = "--prompt-tuning-init-text", paramLabel = "TEXT",
            description = "Prompt tuning with TEXT init: the text whose token embeddings start the prompt.")
    String promptTuningInitText;

    @Option(names = "--init-adapter", paramLabel = "DIR", description = "Start from the weights of a saved adapter (peft folder).")
    Path initAdapter;

    // TrainingArguments (null = not given: the config file or transformers' default applies)
    @Option(names = "--learning-rate") Double learningRate;
    @Option(names = "--num-train-epochs") Double numTrainEpochs;
    @Option(names = "--max-steps") Integer maxSteps;
    @Option(names = "--per-device-train-batch-size") Integer perDeviceTrainBatchSize;
    @Option(names = "--per-device-eval-batch-size") Integer perDeviceEvalBatchSize;
    @Option(names = "--gradient-accumulation-steps") Integer gradientAccumulationSteps;
    @Option(names = "--warmup-steps") Integer warmupSteps;
    @Option(names = "--warmup-ratio") Double warmupRatio;
    @Option(names = "--lr-scheduler-type", paramLabel = "linear|cosine|constant|constant_with_warmup") String lrSchedulerType;
    @Option(names = "--weight-decay") Double weightDecay;
    @Option(names = "--adam-beta1") Double adamBeta1;
    @Option(names = "--adam-beta2") Double adamBeta2;
    @Option(names = "--adam-epsilon") Double adamEpsilon;
    @Option(names = "--max-grad-norm") Double maxGradNorm;
    @Option(names = "--optim", paramLabel = "adamw_torch|adamw_8bit|paged_adamw_8bit|paged_adamw_32bit|sgd") String optim;
    @Option(names = "--logging-steps") Double loggingSteps;
    @Option(names = "--logging-first-step", negatable = true) Boolean loggingFirstStep;
    @Option(names = "--eval-strategy", paramLabel = "no|steps|epoch") String evalStrategy;
    @Option(names = "--eval-steps") Double evalSteps;
    @Option(names = "--save-strategy", paramLabel = "no|steps|epoch") String saveStrategy;
    @Option(names = "--save-steps") Double saveSteps;
    @Option(names = "--save-total-limit") Integer saveTotalLimit;
    @Option(names = "--seed") Long seed;
    @Option(names = "--data-seed") Long dataSeed;
    @Option(names = "--bf16", negatable = true) Boolean bf16;
    @Option(names = "--gradient-checkpointing", negatable = true) Boolean gradientCheckpointing;
    @Option(names = "--resume-from-checkpoint", paramLabel = "latest|DIR") String resumeFromCheckpoint;
    @Option(names = "--max-seq-length") Integer maxSeqLength;
    @Option(names = "--packing", negatable = true) Boolean packing;
    @Option(names = "--completion-only-loss", negatable = true) Boolean completionOnlyLoss;
    @Option(names = "--assistant-only-loss", negatable = true) Boolean assistantOnlyLoss;
    @Option(names = "--offload-activations", negatable = true,
            description = "With --gradient-checkpointing: keep each layer's checkpointed input in pinned host memory (GPU: copied out on a "
                    + "side stream, brought back one layer ahead for the backward), so the context length is bounded by host memory.")
    Boolean offloadActivations;
    @Option(names = "--checkpoint-keep-attention", negatable = true,
            description = "With --gradient-checkpointing: also keep each layer's attention output and log-sum-exp, so the "
                    + "backward's recompute skips the attention forward (same results; about 16 MiB more per 7B layer at 2048 tokens, "
                    + "3.5% faster there). Default: auto, kept when all layers' results take at most 1 GiB (or 1/32 of the GPU's "
                    + "memory when that is more); --no-checkpoint-keep-attention always recomputes. Not used with --offload-activations.")
    Boolean checkpointKeepAttention;
    @Option(names = "--checkpoint-keep-residual", negatable = true,
            description = "With --gradient-checkpointing: also keep each layer's attention block output, so the backward's "
                    + "recompute skips the o projection (same results; 16 MiB more per 7B layer at 2048 tokens). Default: auto, kept "
                    + "when it fits the --checkpoint-keep-attention budget beside the kept attention outputs; "
                    + "--no-checkpoint-keep-residual always recomputes. Not used with --offload-activations.")
    Boolean checkpointKeepResidual;
    @Option(names = "--embedding-in-host-memory", negatable = true,
            description = "On a GPU: keep the frozen token embedding table in page-locked host memory; the lookup reads "
                    + "each step's rows over the bus (about 1 ms per 2,048 tokens) and the table's GPU memory (250 MiB for a "
                    + "7B Llama, 1 GiB for Llama 3's vocabulary) goes to the step. Not with a tied LM head.")
    Boolean embeddingInHostMemory;
    @Option(names = "--checkpoint-keep-dequantized", negatable = true,
            description = "With --gradient-checkpointing on a GPU: keep the 4-bit weights a layer's recompute dequantizes for "
                    + "that layer's backward instead of dequantizing them again (up to 512 MiB, one layer at a time; same results; "
                    + "Llama-7B: 2.5% faster). Default on; --no-checkpoint-keep-dequantized frees that memory.")
    Boolean checkpointKeepDequantized;

    @Override
    public Integer call() {
        if (output == null && config == null) {
            throw new IllegalArgumentException("--output DIR is required (or a --config file with \"output_dir\")");
        }
        TrainingArguments args = TrainingArguments.load(config, overrides(), w -> System.err.println("warning: " + w));
        try (CausalLM lm = modelOptions.load()) {
            int maxPos = lm.config().maxPositionEmbeddings();
            if (args.maxSeqLength() > maxPos) {
                System.err.println("note: max_seq_length " + args.maxSeqLength() + " exceeds the model's max_position_embeddings "
                        + maxPos + "; using " + maxPos);
                args = args.with(Map.of("max_seq_length", maxPos));
            }
            Tokenizer tok = lm.tokenizer();
            JsonlDataset train = JsonlDataset.load(data, tok, args.maxSeqLength(), args.completionOnlyLoss(),
                    args.assistantOnlyLoss(), System.err::println);
            JsonlDataset eval = evalData == null ? null : JsonlDataset.load(evalData, tok, args.maxSeqLength(),
                    args.completionOnlyLoss(), args.assistantOnlyLoss(), System.err::println);
            System.err.printf("data: %d examples (%s), %d trained tokens%s%n", train.size(), train.format(), train.trainedTokens(),
                    eval == null ? "" : "; eval: " + eval.size() + " examples");
            PeftConfig adapter = adapterConfig(lm.config().modelType(), configPeft(), lm.dir().toString());
            TrainableModel model = createTrainableModel(lm, adapter, initAdapter, args);
            var devices = lm.model().devices();
            lm.model().setCheckpointKeepAttention(args.checkpointKeepAttention());
            lm.model().setCheckpointKeepResidual(args.checkpointKeepResidual());
            if (args.embeddingInHostMemory()) lm.model().setEmbeddingInHostMemory(true);
            lm.model().setCheckpointKeepDequantized(args.checkpointKeepDequantized());
            if (args.offloadActivations()) {
                if (devices.isSingle()) lm.model().setActivationStore(dev.qlora4j.placement.Offloading.activationStore(lm.model().backend()));
                else lm.model().setActivationStores(dev.qlora4j.placement.Offloading.activationStores(devices));
            }
            Trainer.Result r = dev.qlora4j.train.DeviceTraining.configure(Trainer.builder(model, args), devices)
                    .trainData(train.examples())
                    .evalData(eval == null ? null : eval.examples())
                    .padTokenId(tok.padTokenId())
                    .progress(ProgressReporter.auto(System.out, memoryField(lm)))
                    .build()
                    .train();
            System.out.println(Json.write(r.metrics()));
        }
        return 0;
    }

    /**
     * HOOK for the lead: wraps the loaded model with the adapter described by {@code adapter}
     * (loading {@code initAdapter}'s weights when given) and returns it as the trainer sees it.
     * Implemented once PeftModel (dev.qlora4j.peft) and the backward ops are merged; until then it
     * reports that the training path is not wired.
     */
    TrainableModel createTrainableModel(CausalLM lm, PeftConfig adapter, Path initAdapter, TrainingArguments args) {
        PeftModel peft;
        String base = lm.dir().toString();
        if (adapter instanceof PrefixTuningConfig prefix) {
            var trainable = initAdapter != null ? TrainablePrefixTuning.fromAdapter(initAdapter, lm.model())
                    : TrainablePrefixTuning.create(prefix, lm.model(), args.seed());
            return new PrefixTuningTrainableModel(lm.model(), trainable, base);
        }
        if (adapter instanceof PromptTuningConfig prompt) {
            var trainable = initAdapter != null ? TrainablePromptTuning.fromAdapter(initAdapter, lm.model())
                    : TrainablePromptTuning.create(prompt, lm.model(), lm.tokenizer(), args.seed());
            return new PromptTuningTrainableModel(lm.model(), trainable, base);
        }
        if (initAdapter != null) {
            String type = dev.qlora4j.peft.config.PeftConfigs.load(initAdapter).peftType();
            if (!type.equals("LORA")) {
                throw new IllegalArgumentException("--init-adapter " + initAdapter + " is a " + type + " adapter; pass the matching "
                        + "--adapter-type (prefix for PREFIX_TUNING, prompt for PROMPT_TUNING)");
            }
            // peft's PeftModel.from_pretrained(base, dir, is_trainable=True): continue training a saved adapter
            peft = PeftModel.fromPretrained(lm, initAdapter, PeftModel.DEFAULT_ADAPTER, true);
        } else if (adapter instanceof LoraConfig lora) {
            peft = PeftModel.wrap(lm, lora.withBaseModel(lm.dir().toString(), null), PeftModel.DEFAULT_ADAPTER, args.seed());
        } else if (adapter instanceof BottleneckConfig bn) {
            if (initAdapter != null) throw new IllegalArgumentException("--init-adapter is supported for lora/dora adapters only");
            var model = lm.model();
            var adapters = dev.qlora4j.peft.BottleneckModel.create(bn, lm.backend(), model.numLayers(),
                    model.config().hiddenSize(), args.seed());
            return new dev.qlora4j.train.BottleneckTrainableModel(model, adapters, lm.dir().toString());
        } else {
            throw new UnsupportedOperationException("adapter type " + adapter.peftType() + " cannot be trained: use lora, dora, "
                    + "bottleneck, prefix or prompt");
        }
        return new PeftTrainableModel(peft, PeftModel.DEFAULT_ADAPTER);
    }

    /**
     * HOOK for the lead: the progress bar's memory field, e.g. "mem 3.1/4.0 GiB" from the CUDA
     * caching allocator ({@link #memoryText}); null on the CPU.
     */
    Supplier<String> memoryField(CausalLM lm) {
        var devices = lm.model().devices();
        if (devices.isSingle()) return gpuMemoryField(lm.model().backend());
        List<Supplier<String>> parts = new java.util.ArrayList<>();
        for (var b : devices.backends()) {
            Supplier<String> f = gpuMemoryField(b);
            if (f != null) parts.add(() -> b.device() + " " + f.get());
        }
        if (parts.isEmpty()) return null;
        return () -> String.join(", ", parts.stream().map(Supplier::get).toList());
    }

    /** "mem 3.1/4.0 GiB (now/peak)" from the CUDA caching allocator; null on the CPU. */
    static Supplier<String> gpuMemoryField(dev.qlora4j.backend.Backend backend) {
        if (!(backend instanceof dev.qlora4j.backend.cuda.CudaBackend cuda)) return null;
        return () -> {
            var stats = cuda.context().allocator().stats();
            return memoryText(stats.allocatedBytes(), stats.peakAllocatedBytes()) + " (now/peak)";
        };
    }

    /** "mem 3.1/4.0 GiB": bytes in use over bytes available. */
    static String memoryText(long usedBytes, long totalBytes) {
        double gib = 1024.0 * 1024 * 1024;
        return String.format(java.util.Locale.ROOT, "mem %.1f/%.1f GiB", usedBytes / gib, totalBytes / gib);
    }

    /** The "peft_config" object of the --config file (peft's adapter_config.json keys), or null. */
    PeftConfig configPeft() {
        if (config == null) return null;
        try {
            var node = new com.fasterxml.jackson.databind.ObjectMapper().readTree(java.nio.file.Files.readString(config));
            var pc = node == null ? null : node.get(TrainingArguments.PEFT_CONFIG_KEY);
            if (pc == null || pc.isNull()) return null;
            if (!pc.isObject()) {
                throw new IllegalArgumentException(config + ": \"" + TrainingArguments.PEFT_CONFIG_KEY + "\" must be an object of peft's "
                        + "adapter_config.json keys, e.g. {\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 20}");
            }
            return dev.qlora4j.peft.config.PeftConfigs.parse(pc.toString());
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException("cannot read " + config + ": " + e.getMessage(), e);
        }
    }

    /**
     * The adapter to train: --adapter-type (else the config file's peft_config, else lora); for
     * prefix and prompt tuning, the peft_config's values (when it is of that type) with the given
     * flags on top; baseDir names the tokenizer of a TEXT prompt init.
     */
    PeftConfig adapterConfig(String modelType, PeftConfig fromFile, String baseDir) {
        String kind = adapterType != null ? adapterType.toLowerCase(java.util.Locale.ROOT)
                : fromFile == null ? "lora"
                : switch (fromFile.peftType()) {
                    case PrefixTuningConfig.PEFT_TYPE -> "prefix";
                    case PromptTuningConfig.PEFT_TYPE -> "prompt";
                    case BottleneckConfig.PEFT_TYPE -> "bottleneck";
                    default -> fromFile instanceof LoraConfig l && l.useDora() ? "dora" : "lora";
                };
        if (adapterType == null && fromFile != null && !kind.equals("prefix") && !kind.equals("prompt")) return fromFile;
        return switch (kind) {
            case "prefix" -> {
                PrefixTuningConfig f = fromFile instanceof PrefixTuningConfig p ? p : PrefixTuningConfig.of(20, false);
                yield new PrefixTuningConfig(numVirtualTokens != null ? numVirtualTokens : f.numVirtualTokens(), f.tokenDim(),
                        f.numTransformerSubmodules(), f.numAttentionHeads(), f.numLayers(),
                        encoderHiddenSize != null ? encoderHiddenSize : f.encoderHiddenSize(),
                        prefixProjection != null ? prefixProjection : f.prefixProjection(), f.modulesToSave(),
                        f.taskType() == null ? "CAUSAL_LM" : f.taskType(), null, null, false, f.extra());
            }
            case "prompt" -> {
                PromptTuningConfig f = fromFile instanceof PromptTuningConfig p ? p : PromptTuningConfig.random(20);
                PromptTuningConfig.Init init = promptTuningInit != null ? PromptTuningConfig.Init.valueOf(
                        promptTuningInit.toUpperCase(java.util.Locale.ROOT)) : f.promptTuningInit();
                String text = promptTuningInitText != null ? promptTuningInitText : f.promptTuningInitText();
                if (init == PromptTuningConfig.Init.TEXT && text == null) {
                    throw new IllegalArgumentException("--prompt-tuning-init TEXT needs --prompt-tuning-init-text \"...\" (the text whose "
                            + "token embeddings start the prompt)");
                }
                String tokenizer = init == PromptTuningConfig.Init.TEXT
                        ? (f.tokenizerNameOrPath() != null ? f.tokenizerNameOrPath() : baseDir) : f.tokenizerNameOrPath();
                yield new PromptTuningConfig(numVirtualTokens != null ? numVirtualTokens : f.numVirtualTokens(), f.tokenDim(),
                        f.numTransformerSubmodules(), f.numAttentionHeads(), f.numLayers(), init, text, tokenizer,
                        init == PromptTuningConfig.Init.TEXT ? f.tokenizerKwargs() : null, f.modulesToSave(),
                        f.taskType() == null ? "CAUSAL_LM" : f.taskType(), null, null, false, f.extra());
            }
            default -> adapterConfig(modelType);
        };
    }

    /** The adapter the LoRA/DoRA/bottleneck flags describe (target_modules default: peft's for the model type). */
    PeftConfig adapterConfig(String modelType) {
        String kind = adapterType == null ? "lora" : adapterType.toLowerCase(java.util.Locale.ROOT);
        return switch (kind) {
            case "lora", "dora" -> {
                LoraConfig.Builder b = LoraConfig.builder().r(loraR).loraAlpha(loraAlpha).loraDropout(loraDropout)
                        .useRslora(useRslora).useDora(kind.equals("dora")).taskType("CAUSAL_LM");
                if (targetModules != null && !targetModules.isEmpty()) {
                    b.targetModules(targetModules.size() == 1 && targetModules.get(0).equals(ModuleSelector.ALL_LINEAR)
                            ? ModuleSelector.allLinear() : new ModuleSelector.Names(targetModules));
                }
                yield TargetModules.resolve(b.build(), modelType);
            }
            case "bottleneck" -> BottleneckConfig.houlsby(reductionFactor);
            case "prefix", "prompt" -> adapterConfig(modelType, null, null);
            default -> throw new IllegalArgumentException("--adapter-type " + adapterType + " is not one of "
                    + Arrays.asList("lora", "dora", "bottleneck", "prefix", "prompt"));
        };
    }

    /** The TrainingArguments flags that were given, under transformers' names. */
    Map<String, Object> overrides() {
        Map<String, Object> m = new LinkedHashMap<>();
        put(m, "output_dir", output == null ? null : output.toString());
        put(m, "learning_rate", learningRate);
        put(m, "num_train_epochs", numTrainEpochs);
        put(m, "max_steps", maxSteps);
        put(m, "per_device_train_batch_size", perDeviceTrainBatchSize);
        put(m, "per_device_eval_batch_size", perDeviceEvalBatchSize);
        put(m, "gradient_accumulation_steps", gradientAccumulationSteps);
        put(m, "warmup_steps", warmupSteps);
        put(m, "warmup_ratio", warmupRatio);
        put(m, "lr_scheduler_type", lrSchedulerType);
        put(m, "weight_decay", weightDecay);
        put(m, "adam_beta1", adamBeta1);
        put(m, "adam_beta2", adamBeta2);
        put(m, "adam_epsilon", adamEpsilon);
        put(m, "max_grad_norm", maxGradNorm);
        put(m, "optim", optim);
        put(m, "logging_steps", loggingSteps);
        put(m, "logging_first_step", loggingFirstStep);
        put(m, "eval_strategy", evalStrategy);
        put(m, "eval_steps", evalSteps);
        put(m, "save_strategy", saveStrategy);
        put(m, "save_steps", saveSteps);
        put(m, "save_total_limit", saveTotalLimit);
        put(m, "seed", seed);
        put(m, "data_seed", dataSeed);
        put(m, "bf16", bf16);
        put(m, "gradient_checkpointing", gradientCheckpointing);
        put(m, "resume_from_checkpoint", resumeFromCheckpoint);
        put(m, "max_seq_length", maxSeqLength);
        put(m, "packing", packing);
        put(m, "completion_only_loss", completionOnlyLoss);
        put(m, "assistant_only_loss", assistantOnlyLoss);
        put(m, "offload_activations", offloadActivations);
        put(m, "checkpoint_keep_attention", checkpointKeepAttention);
        put(m, "checkpoint_keep_dequantized", checkpointKeepDequantized);
        put(m, "checkpoint_keep_residual", checkpointKeepResidual);
        put(m, "embedding_in_host_memory", embeddingInHostMemory);
        return m;
    }

    private static void put(Map<String, Object> m, String key, Object value) {
        if (value != null) m.put(key, value);
    }
}
