package dev.qlora4j.cli;

import dev.qlora4j.CausalLM;
import dev.qlora4j.LoadOptions;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.model.CheckpointSaver;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.train.Example;
import dev.qlora4j.train.JsonlDataset;
import dev.qlora4j.train.PeftTrainableModel;
import dev.qlora4j.train.ProgressReporter;
import dev.qlora4j.train.Trainer;
import dev.qlora4j.train.TrainingArguments;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

/**
 * qlora4j demo: the whole QLoRA flow on the embedded model. Load it in 4-bit (NF4, double
 * quantization), attach LoRA, fine-tune on a bundled dataset that teaches a new format
 * ("Topic: X / Verse:" answered by a verse on X ending in "Amen."), show generations and eval loss
 * before and after, save the adapter, reload it on a fresh quantized base, and merge it.
 */
@Command(name = "demo", mixinStandardHelpOptions = true,
        description = "QLoRA end to end on the embedded model: 4-bit load, LoRA fine-tune, save, reload, merge.")
public final class DemoCommand implements Callable<Integer> {
    static final List<String> TOPICS = List.of("light", "peace", "sea", "wisdom");

    @Option(names = "--output", paramLabel = "DIR", defaultValue = "demo-output",
            description = "Where the adapter, checkpoints, metrics and merged model go (default: ${DEFAULT-VALUE}).")
    Path output;

    @Option(names = "--device", paramLabel = "cpu|cuda|auto", defaultValue = "auto",
            description = "Where to run (default: ${DEFAULT-VALUE}: the GPU when one is usable, else the CPU).")
    String device;

    @Option(names = "--max-steps", defaultValue = "60") int maxSteps;
    @Option(names = "--model", paramLabel = "DIR", description = "Base model (default: the embedded model).") Path model;

    @Override
    public Integer call() throws IOException {
        Path base = model != null ? model : DefaultModel.path();
        Files.createDirectories(output);
        Path trainFile = extract("demo/train.jsonl"), evalFile = extract("demo/eval.jsonl");
        // QLoRA's setup; the matmuls compute in float32 (bf16 rounding only costs time on a CPU)
        LoadOptions qlora = new LoadOptions(device, new QuantizationConfig(false, true, 6.0, null, false, false,
                DType.F32, dev.qlora4j.quant.QuantType.NF4, true, DType.U8, 64));
        say("1. load %s in 4-bit (NF4, double quantization) on %s", base, device);
        List<String> before, after;
        double lossBefore, lossAfter;
        Path adapterDir = output.resolve("adapter");
        try (CausalLM lm = CausalLM.fromPretrained(base, qlora)) {
            JsonlDataset train = JsonlDataset.load(trainFile, lm.tokenizer(), 128, true, true, m -> {});
            JsonlDataset eval = JsonlDataset.load(evalFile, lm.tokenizer(), 128, true, true, m -> {});
            lossBefore = evalLoss(lm, eval.examples());
            before = generate(lm);
            say("2. attach LoRA (r=8, alpha=16, all linear layers) and fine-tune %d steps on %d examples", maxSteps, train.size());
            LoraConfig cfg = LoraConfig.builder().r(8).loraAlpha(16).targetModules(new ModuleSelector.AllLinear())
                    .build().withBaseModel(base.toString(), null);
            PeftModel peft = PeftModel.wrap(lm, cfg, PeftModel.DEFAULT_ADAPTER, 42);
            TrainingArguments args = TrainingArguments.defaults(output).with(Map.ofEntries(
                    Map.entry("max_steps", maxSteps), Map.entry("learning_rate", 2e-3),
                    Map.entry("per_device_train_batch_size", 8), Map.entry("warmup_steps", 5),
                    Map.entry("lr_scheduler_type", "cosine"), Map.entry("logging_steps", 10),
                    Map.entry("eval_strategy", "steps"), Map.entry("eval_steps", Math.max(1, maxSteps / 2)),
                    Map.entry("save_steps", maxSteps), Map.entry("seed", 42), Map.entry("max_seq_length", 128)));
            dev.qlora4j.train.DeviceTraining.configure(
                    Trainer.builder(new PeftTrainableModel(peft, PeftModel.DEFAULT_ADAPTER), args), lm.backend())
                    .trainData(train.examples()).evalData(eval.examples()).padTokenId(lm.tokenizer().padTokenId())
                    .progress(ProgressReporter.auto(System.out, TrainCommand.gpuMemoryField(lm.backend()))).build().train();
            peft.save(adapterDir);
            say("3. saved the adapter to %s (peft format: adapter_config.json + adapter_model.safetensors)", adapterDir);
        }
        say("4. reload the adapter on a fresh 4-bit base");
        try (CausalLM lm = CausalLM.fromPretrained(base, qlora)) {
            PeftModel.fromPretrained(lm, adapterDir, PeftModel.DEFAULT_ADAPTER, false);
            JsonlDataset eval = JsonlDataset.load(evalFile, lm.tokenizer(), 128, true, true, m -> {});
            lossAfter = evalLoss(lm, eval.examples());
            after = generate(lm);
        }
        System.out.println();
        for (int i = 0; i < TOPICS.size(); i++) {
            System.out.printf("Topic: %s%n  before: %s%n  after:  %s%n", TOPICS.get(i), before.get(i), after.get(i));
        }
        System.out.printf("%neval loss (completion tokens of %s): before %.4f -> after %.4f (perplexity %.1f -> %.1f)%n",
                evalFile.getFileName(), lossBefore, lossAfter, Math.exp(lossBefore), Math.exp(lossAfter));
        Path merged = output.resolve("merged");
        try (CausalLM lm = CausalLM.fromPretrained(base, LoadOptions.cpu())) {
            PeftModel.fromPretrained(lm, adapterDir, PeftModel.DEFAULT_ADAPTER, false).mergeAndUnload();
            CheckpointSaver.save(lm.model(), merged, DType.BF16, base);
        }
        say("5. merged the adapter into the 16-bit base: %s (load it with --model %s)", merged, merged);
        return 0;
    }

    /** Token-weighted mean loss over the completions (prompt tokens are masked, as in training). */
    static double evalLoss(CausalLM lm, List<Example> examples) {
        LossSum total = new LossSum(0, 0);
        for (Example e : examples) {
            int[] ids = e.ids(), labels = e.labels();
            int n = ids.length;
            int[] pos = new int[n], targets = new int[n];
            for (int i = 0; i < n; i++) {
                pos[i] = i;
                targets[i] = i + 1 < n ? labels[i + 1] : -100;
            }
            total = total.plus(lm.model().evalStep(ids, pos, null, targets, 1));
        }
        return total.mean();
    }

    static List<String> generate(CausalLM lm) {
        List<String> out = new ArrayList<>();
        for (String t : TOPICS) {
            GenerationResult r = lm.generate(List.of("Topic: " + t + "\nVerse:"), SamplingParams.greedy(32), TokenListener.NONE);
            String text = r.texts()[0].strip();
            int nl = text.indexOf('\n');
            out.add(nl >= 0 ? text.substring(0, nl) + " ..." : text);
        }
        return out;
    }

    private Path extract(String resource) throws IOException {
        Path target = output.resolve(Path.of(resource).getFileName());
        try (InputStream in = DemoCommand.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) throw new IllegalStateException("bundled demo data " + resource + " is missing from the jar");
            Files.copy(in, target, StandardCopyOption.REPLACE_EXISTING);
        }
        return target;
    }

    private static void say(String fmt, Object... args) {
        System.out.println();
        System.out.printf("== " + fmt + "%n", args);
    }
}
