package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.GradClip;
import dev.qlora4j.optim.LrSchedule;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.OptimizerState;
import dev.qlora4j.optim.Param;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.TreeSet;
import java.util.function.Consumer;

/**
 * The training loop of transformers' Trainer (>= 4.46 semantics) over a {@link TrainableModel}:
 *
 * <ul>
 *   <li>Steps: an epoch is ceil(rows / per_device_train_batch_size) micro-batches; optimizer
 *       steps group gradient_accumulation_steps of them (the epoch's last group may be smaller);
 *       max_steps, when > 0, overrides num_train_epochs, else max_steps =
 *       ceil(num_train_epochs x steps per epoch).</li>
 *   <li>Loss normalization: every micro-batch's gradient is scaled by 1 / (trained tokens of the
 *       whole accumulated step), so accumulation equals one big batch (the fix of 4.46); the
 *       step's loss is that token mean.</li>
 *   <li>Per step: clip_grad_norm_(max_grad_norm) (its pre-clip norm is the logged grad_norm),
 *       learning rate from the schedule (warmup_steps, else ceil(warmup_ratio x max_steps)),
 *       optimizer step, zero_grad.</li>
 *   <li>Cadence as DefaultFlowCallback: log every logging_steps (loss = mean of the step losses
 *       since the last log, rounded to 4 places), evaluate every eval_steps, save every
 *       save_steps and at the last step; "epoch" strategies at each epoch end.</li>
 *   <li>Order: rows are shuffled per epoch from (data_seed, epoch) only; a checkpoint records the
 *       data position so a resumed run continues with the same batches, and ends with the same
 *       parameters bit for bit.</li>
 * </ul>
 *
 * Output in output_dir: checkpoint-N/ folders, metrics.jsonl, the final adapter,
 * trainer_state.json, train_results.json / eval_results.json / all_results.json, loss_curve.png.
 * When eval data is given, the run ends with an evaluation of the final weights (as calling
 * trainer.evaluate() after train() does) unless the last step was just evaluated. eval_loss is
 * token-weighted over the whole eval set (transformers averages per-batch means weighted by batch
 * size; the token mean is the quantity perplexity needs).
 */
public final class Trainer {
    /** Builds the optimizer over the trainable parameters (default {@link Optimizers#create}). */
    @FunctionalInterface
    public interface OptimizerFactory {
        Optimizer create(TrainingArguments args, List<Param> params);
    }

    /** clip_grad_norm_: scales gradients so their global L2 norm is at most maxNorm; returns the norm before. */
    @FunctionalInterface
    public interface GradClipper {
        float clip(List<Param> params, double maxNorm);
    }

    /** The outcome: steps taken in all, mean step loss of the run, and the final metrics. */
    public record Result(long globalStep, double trainLoss, Map<String, Object> metrics, Path outputDir) { }

    private static final String OPTIMIZER_FILE = "optimizer.safetensors";
    private static final String SCHEDULER_FILE = "scheduler.json";

    private final TrainableModel model;
    private final TrainingArguments args;
    private final List<Example> train;
    private final List<Example> eval;
    private final Collator collator;
    private final OptimizerFactory optimizerFactory;
    private final GradClipper clipper;
    private final ProgressReporter progress;
    private final Consumer<String> messages;

    // set up by train()
    private List<TrainRow> rows;
    private int numBatches;
    private List<Param> params;
    private Optimizer optimizer;
    private LrSchedule schedule;
    private TrainerState state;
    private MetricsLog metrics;
    private long windowInputTokens;
    private long windowStartNanos;
    private long runStartNanos;
    private long runSteps;
    private long runExamples;
    private long runInputTokens;

    private Trainer(Builder b) {
        this.model = b.model;
        this.args = b.args;
        this.train = b.train;
        this.eval = b.eval;
        this.collator = new Collator(b.padTokenId);
        this.optimizerFactory = b.optimizerFactory;
        this.clipper = b.clipper;
        this.progress = b.progress;
        this.messages = b.messages != null ? b.messages : b.progress::message;
    }

    public static Builder builder(TrainableModel model, TrainingArguments args) {
        return new Builder(model, args);
    }

    /** Trainer options; only the model, arguments and training data are required. */
    public static final class Builder {
        private final TrainableModel model;
        private final TrainingArguments args;
        private List<Example> train;
        private List<Example> eval;
        private int padTokenId;
        private OptimizerFactory optimizerFactory = Optimizers::create;
        private GradClipper clipper = GradClip::clipByGlobalNorm;
        private ProgressReporter progress = ProgressReporter.NONE;
        private Consumer<String> messages;

        private Builder(TrainableModel model, TrainingArguments args) {
            this.model = Objects.requireNonNull(model, "model");
            this.args = Objects.requireNonNull(args, "args");
        }

        public Builder trainData(List<Example> examples) { this.train = List.copyOf(examples); return this; }

        public Builder evalData(List<Example> examples) { this.eval = examples == null ? null : List.copyOf(examples); return this; }

        /** The tokenizer's pad id (padded positions are never trained whatever it is). */
        public Builder padTokenId(int id) { this.padTokenId = id; return this; }

        public Builder optimizerFactory(OptimizerFactory f) { this.optimizerFactory = Objects.requireNonNull(f); return this; }

        /** Gradient clipping (default: the host GradClip; a CUDA backend passes its device version). */
        public Builder gradClipper(GradClipper c) { this.clipper = Objects.requireNonNull(c); return this; }

        public Builder progress(ProgressReporter p) { this.progress = Objects.requireNonNull(p); return this; }

        /** Notices (checkpoints written, resume details); default: the progress reporter's message(). */
        public Builder messages(Consumer<String> m) { this.messages = m; return this; }

        public Trainer build() {
            if (train == null || train.isEmpty()) throw new IllegalArgumentException("no training examples: pass a non-empty dataset");
            if (!args.evalStrategy().equals("no") && (eval == null || eval.isEmpty())) {
                throw new IllegalArgumentException("eval_strategy is \"" + args.evalStrategy()
                        + "\" but no evaluation data was given: pass eval data or set eval_strategy \"no\"");
            }
            return new Trainer(this);
        }
    }

    /** Runs (or resumes) training to the end; see the class comment for what is written. */
    public Result train() {
        setUp();
        Path resumeFrom = args.resumeFromCheckpoint() == null ? null
                : Checkpoints.resolve(args.outputDir(), args.resumeFromCheckpoint());
        if (resumeFrom != null) restore(resumeFrom);
        metrics = new MetricsLog(args.outputDir(), state.logHistory);
        try {
            model.zeroGrad();
            progress.start(state.globalStep, state.maxSteps);
            runStartNanos = windowStartNanos = System.nanoTime();
            loop();
            return finish();
        } finally {
            metrics.close();
            progress.close();
        }
    }

    private void setUp() {
        try {
            Files.createDirectories(args.outputDir());
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot create output_dir " + args.outputDir() + ": " + e.getMessage(), e);
        }
        List<Example> examples = new ArrayList<>(train.size());
        for (Example e : train) examples.add(e.truncate(args.maxSeqLength()));
        rows = args.packing() ? Packer.pack(examples, args.maxSeqLength()) : Packer.unpacked(examples);
        numBatches = ceilDiv(rows.size(), args.perDeviceTrainBatchSize());
        int updatesPerEpoch = Math.max(ceilDiv(numBatches, args.gradientAccumulationSteps()), 1);
        state = new TrainerState();
        if (args.maxSteps() > 0) {
            state.maxSteps = args.maxSteps();
            state.numTrainEpochs = (int) ceilDiv(args.maxSteps(), updatesPerEpoch);
        } else {
            state.maxSteps = (long) Math.ceil(args.numTrainEpochs() * updatesPerEpoch);
            state.numTrainEpochs = (int) Math.ceil(args.numTrainEpochs());
        }
        state.loggingSteps = TrainingArguments.resolveSteps(args.loggingSteps(), state.maxSteps);
        state.evalSteps = TrainingArguments.resolveSteps(args.evalStepsOrLogging(), state.maxSteps);
        state.saveSteps = TrainingArguments.resolveSteps(args.saveSteps(), state.maxSteps);
        state.trainBatchSize = args.perDeviceTrainBatchSize();
        state.seed = args.seed();
        state.dataSeed = args.dataSeedOrSeed();
        state.rows = rows.size();
        state.dataFingerprint = fingerprint(rows);
        int warmup = LrSchedule.warmupSteps(args.warmupSteps(), args.warmupRatio(), Math.toIntExact(state.maxSteps));
        schedule = LrSchedule.of(args.lrSchedulerType(), warmup, Math.toIntExact(state.maxSteps));
        params = List.copyOf(model.trainableParameters());
        if (params.isEmpty()) {
            throw new IllegalArgumentException("the model has no trainable parameters: attach an adapter (e.g. LoRA) before training");
        }
        optimizer = optimizerFactory.create(args, params);
    }

    private void restore(Path checkpoint) {
        Map<String, Object> rec = TrainerState.recorded(checkpoint);
        if (!Objects.equals(String.valueOf(rec.get("data_fingerprint")), Long.toHexString(state.dataFingerprint))
                || !Objects.equals(((Number) rec.getOrDefault("rows", -1)).intValue(), state.rows)) {
            messages.accept("warning: " + checkpoint + " was trained on different data or batching (rows " + rec.get("rows") + " vs "
                    + state.rows + "): the run continues from its step, but not with the data order it would have had");
        }
        if (((Number) rec.getOrDefault("data_seed", state.dataSeed)).longValue() != state.dataSeed
                || ((Number) rec.getOrDefault("seed", state.seed)).longValue() != state.seed) {
            messages.accept("warning: " + checkpoint + " was trained with seed " + rec.get("seed") + " / data_seed " + rec.get("data_seed")
                    + "; resuming with " + state.seed + " / " + state.dataSeed + " changes the data order from here on");
        }
        state.restore(checkpoint);
        model.loadAdapter(checkpoint);
        Path opt = checkpoint.resolve(OPTIMIZER_FILE);
        if (!Files.isRegularFile(opt)) {
            throw new IllegalArgumentException(checkpoint + " has no " + OPTIMIZER_FILE + ": the checkpoint is incomplete; resume from another one");
        }
        OptimizerState.load(opt, optimizer);
        if (state.microBatchesDone > numBatches) {
            throw new IllegalArgumentException(checkpoint + " stopped after " + state.microBatchesDone + " micro-batches of epoch "
                    + state.epochIndex + " but an epoch now has " + numBatches + ": per_device_train_batch_size or the data changed; "
                    + "resume with the original settings");
        }
        messages.accept("resuming from " + checkpoint + " at step " + state.globalStep + " (epoch " + fmt(state.epoch) + ")");
    }

    private void loop() {
        int bs = args.perDeviceTrainBatchSize(), ga = args.gradientAccumulationSteps();
        for (int epoch = state.epochIndex; epoch < state.numTrainEpochs && state.globalStep < state.maxSteps; epoch++) {
            int[] order = DataOrder.permutation(rows.size(), state.dataSeed, epoch);
            int m = epoch == state.epochIndex ? state.microBatchesDone : 0;
            while (m < numBatches && state.globalStep < state.maxSteps) {
                int group = Math.min(ga, numBatches - m);
                List<Batch> batches = new ArrayList<>(group);
                List<List<TrainRow>> groupRows = new ArrayList<>(group);
                long total = 0;
                for (int i = 0; i < group; i++) {
                    int from = (m + i) * bs, to = Math.min(from + bs, rows.size());
                    List<TrainRow> r = new ArrayList<>(to - from);
                    for (int k = from; k < to; k++) r.add(rows.get(order[k]));
                    Batch b = collator.collate(r);
                    batches.add(b);
                    groupRows.add(r);
                    total += b.tokens();
                }
                optimizerStep(batches, groupRows, total, epoch);
                m += group;
                state.epochIndex = epoch;
                state.microBatchesDone = m;
                state.epoch = epoch + (double) m / numBatches;
                boolean last = state.globalStep >= state.maxSteps;
                boolean log = (args.loggingFirstStep() && state.globalStep == 1)
                        || (args.loggingStrategy().equals("steps") && state.globalStep % state.loggingSteps == 0);
                boolean evaluate = args.evalStrategy().equals("steps") && state.globalStep % state.evalSteps == 0;
                boolean save = (args.saveStrategy().equals("steps") && state.globalStep % state.saveSteps == 0)
                        || (last && !args.saveStrategy().equals("no"));
                logEvaluateSave(log, evaluate, save);
            }
            // on_epoch_end also runs when max_steps ends the run inside an epoch, as in transformers
            logEvaluateSave(args.loggingStrategy().equals("epoch"), args.evalStrategy().equals("epoch"), args.saveStrategy().equals("epoch"));
        }
    }

    private void optimizerStep(List<Batch> batches, List<List<TrainRow>> groupRows, long totalTokens, int epoch) {
        long step = state.globalStep + 1;
        if (totalTokens == 0) {
            throw new IllegalStateException("step " + step + " has no trained token in any of its micro-batches; every example must train at least one token");
        }
        float gradScale = 1.0f / totalTokens;
        double lossSum = 0;
        long input = 0;
        int examples = 0;
        for (int i = 0; i < batches.size(); i++) {
            Batch b = batches.get(i);
            model.setStep(DataOrder.stepSeed(state.seed, state.globalStep, i));
            TransformerLM.StepResult r = model.trainStep(b, args.gradientCheckpointing(), gradScale);
            if (!Double.isFinite(r.lossSum())) diverged("the loss is " + r.lossSum(), step, epoch, groupRows.get(i));
            lossSum += r.lossSum();
            input += b.inputTokens();
            examples += b.examples();
        }
        double stepLoss = lossSum / totalTokens;
        double maxNorm = args.maxGradNorm() > 0 ? args.maxGradNorm() : Double.POSITIVE_INFINITY; // +inf: measure only
        float norm = clipper.clip(params, maxNorm);
        if (!Float.isFinite(norm)) {
            List<TrainRow> all = new ArrayList<>();
            groupRows.forEach(all::addAll);
            diverged("the gradient norm is " + norm + " (loss " + fmt(stepLoss) + ")", step, epoch, all);
        }
        double lr = schedule.lr(args.learningRate(), state.globalStep);
        optimizer.setLr(lr);
        optimizer.step();
        model.zeroGrad();
        state.globalStep = step;
        state.lossSinceLog += stepLoss;
        state.totalLoss += stepLoss;
        state.inputTokensSeen += input;
        state.trainedTokensSeen += totalTokens;
        state.lastGradNorm = norm;
        state.lastLr = lr;
        windowInputTokens += input;
        runSteps++;
        runExamples += examples;
        runInputTokens += input;
        double seconds = (System.nanoTime() - runStartNanos) / 1e9;
        progress.step(step, stepLoss, lr, seconds > 0 ? runInputTokens / seconds : 0);
    }

    private void diverged(String what, long step, int epoch, List<TrainRow> rowsOfBatch) {
        TreeSet<Integer> lines = new TreeSet<>();
        for (TrainRow r : rowsOfBatch) for (Example e : r.parts()) if (e.line() > 0) lines.add(e.line());
        List<Path> ckpts = Checkpoints.list(args.outputDir());
        String lastGood = ckpts.isEmpty() ? "none yet" : ckpts.get(ckpts.size() - 1).toString();
        throw new TrainingDivergedException("training stopped at step " + step + " (epoch " + (epoch + 1) + "): " + what
                + ". The optimizer step was not taken; the last checkpoint is " + lastGood + ". "
                + (lines.isEmpty() ? "" : "The batch holds the examples at data lines " + abbreviate(lines) + ". ")
                + "What to do: lower learning_rate (now " + args.learningRate() + "; try a tenth), add warmup (warmup_ratio 0.03), "
                + "keep max_grad_norm > 0 (now " + args.maxGradNorm() + "), check those examples for broken text, "
                + "and use bf16 (not fp16) compute if the model overflows; then resume_from_checkpoint or start again", step);
    }

    private static String abbreviate(TreeSet<Integer> lines) {
        List<Integer> l = new ArrayList<>(lines);
        return l.size() <= 20 ? l.toString() : l.subList(0, 20) + " ...";
    }

    /** transformers' _maybe_log_save_evaluate: log, then evaluate, then save (so the checkpoint holds both). */
    private void logEvaluateSave(boolean log, boolean evaluate, boolean save) {
        if (log && state.globalStep > state.lastLoggedStep) {
            Map<String, Object> e = new LinkedHashMap<>();
            e.put("loss", round(state.lossSinceLog / (state.globalStep - state.lastLoggedStep), 4));
            e.put("grad_norm", state.lastGradNorm);
            e.put("learning_rate", state.lastLr);
            e.put("epoch", state.epoch);
            e.put("step", state.globalStep);
            double seconds = (System.nanoTime() - windowStartNanos) / 1e9;
            e.put("tokens_per_second", round(seconds > 0 ? windowInputTokens / seconds : 0, 2));
            state.lossSinceLog = 0;
            state.lastLoggedStep = state.globalStep;
            windowInputTokens = 0;
            windowStartNanos = System.nanoTime();
            record(e);
        }
        if (evaluate && eval != null && state.globalStep > state.lastEvalStep) {
            record(evaluate());
            state.lastEvalStep = state.globalStep;
        }
        if (save && state.globalStep > state.lastSavedStep) {
            state.lastSavedStep = state.globalStep;
            Path dir = Checkpoints.save(args.outputDir(), state.globalStep, this::writeCheckpoint);
            messages.accept("saved " + dir);
            if (args.saveTotalLimit() != null) {
                for (Path p : Checkpoints.rotate(args.outputDir(), args.saveTotalLimit())) {
                    messages.accept("deleted " + p + " (save_total_limit " + args.saveTotalLimit() + ")");
                }
            }
        }
    }

    private void record(Map<String, Object> entry) {
        state.logHistory.add(entry);
        metrics.append(entry);
        progress.log(entry);
    }

    /** eval_loss over the whole eval set: sum of token losses / tokens (token-weighted, file order, no packing). */
    private Map<String, Object> evaluate() {
        long t0 = System.nanoTime();
        LossSum total = new LossSum(0, 0);
        int bs = args.perDeviceEvalBatchSize(), batches = 0;
        for (int from = 0; from < eval.size(); from += bs) {
            List<TrainRow> r = new ArrayList<>();
            for (int k = from; k < Math.min(from + bs, eval.size()); k++) r.add(TrainRow.of(eval.get(k).truncate(args.maxSeqLength())));
            total = total.plus(model.eval(collator.collate(r)));
            batches++;
        }
        double seconds = Math.max((System.nanoTime() - t0) / 1e9, 1e-9);
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("eval_loss", total.mean());
        e.put("eval_tokens", total.tokens());
        e.put("eval_runtime", round(seconds, 4));
        e.put("eval_samples_per_second", round(eval.size() / seconds, 3));
        e.put("eval_steps_per_second", round(batches / seconds, 3));
        e.put("epoch", state.epoch);
        e.put("step", state.globalStep);
        return e;
    }

    private void writeCheckpoint(Path dir) {
        model.saveAdapter(dir);
        OptimizerState.save(dir.resolve(OPTIMIZER_FILE), optimizer);
        Map<String, Object> sched = new LinkedHashMap<>();
        sched.put("lr_scheduler_type", schedule.kind().hfName());
        sched.put("num_warmup_steps", schedule.warmupSteps());
        sched.put("num_training_steps", schedule.totalSteps());
        sched.put("num_cycles", schedule.numCycles());
        sched.put("base_lr", args.learningRate());
        sched.put("last_epoch", state.globalStep); // LambdaLR's step count
        sched.put("last_lr", schedule.lr(args.learningRate(), state.globalStep));
        TrainJson.write(dir.resolve(SCHEDULER_FILE), sched);
        TrainJson.write(dir.resolve("training_args.json"), args.toMap());
        TrainJson.writeSorted(dir.resolve("trainer_state.json"), state.transformersJson());
        TrainJson.write(dir.resolve(Checkpoints.TRAINER_FILE), state.resumeJson()); // last: marks the checkpoint complete
    }

    private Result finish() {
        Map<String, Object> evalMetrics = null;
        if (eval != null && state.globalStep > state.lastEvalStep) {
            evalMetrics = evaluate();
            record(evalMetrics);
            state.lastEvalStep = state.globalStep;
        } else if (eval != null) {
            for (int i = state.logHistory.size() - 1; i >= 0 && evalMetrics == null; i--) {
                if (state.logHistory.get(i).containsKey("eval_loss")) evalMetrics = state.logHistory.get(i);
            }
        }
        double seconds = Math.max((System.nanoTime() - runStartNanos) / 1e9, 1e-9);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("train_runtime", round(seconds, 4));
        m.put("train_samples_per_second", round(runExamples / seconds, 3));
        m.put("train_steps_per_second", round(runSteps / seconds, 3));
        m.put("train_tokens_per_second", round(runInputTokens / seconds, 2));
        m.put("total_flos", 0.0);
        double trainLoss = state.globalStep > 0 ? state.totalLoss / state.globalStep : Double.NaN;
        m.put("train_loss", trainLoss);
        m.put("epoch", state.epoch);
        m.put("step", state.globalStep);
        record(m);
        model.saveAdapter(args.outputDir());
        TrainJson.writeSorted(args.outputDir().resolve("trainer_state.json"), state.transformersJson());
        Map<String, Object> trainResults = new LinkedHashMap<>(m);
        trainResults.remove("step");
        TrainJson.write(args.outputDir().resolve("train_results.json"), trainResults);
        Map<String, Object> all = new LinkedHashMap<>(trainResults);
        if (evalMetrics != null) {
            Map<String, Object> er = new LinkedHashMap<>(evalMetrics);
            er.remove("step");
            TrainJson.write(args.outputDir().resolve("eval_results.json"), er);
            all.putAll(er);
        }
        TrainJson.write(args.outputDir().resolve("all_results.json"), all);
        try {
            LossCurve.write(args.outputDir().resolve(LossCurve.FILE), state.logHistory);
        } catch (RuntimeException | LinkageError e) {
            // the curve is a convenience: a missing font or AWT library must not fail a finished run
            messages.accept("warning: could not draw " + LossCurve.FILE + ": " + e);
        }
        messages.accept("done: " + state.globalStep + " steps, train_loss " + fmt(trainLoss) + "; adapter saved to " + args.outputDir());
        return new Result(state.globalStep, trainLoss, all, args.outputDir());
    }

    /** Hash of the rows' token ids and labels in order: identifies the data a checkpoint was trained on. */
    static long fingerprint(List<TrainRow> rows) {
        long h = 0xcbf29ce484222325L;
        for (TrainRow r : rows) {
            for (Example e : r.parts()) {
                for (int i = 0; i < e.length(); i++) {
                    h = (h ^ e.ids()[i]) * 0x100000001b3L;
                    h = (h ^ e.labels()[i]) * 0x100000001b3L;
                }
                h = (h ^ 0x5eed) * 0x100000001b3L;
            }
            h = (h ^ 0x7e57) * 0x100000001b3L;
        }
        return h;
    }

    private static int ceilDiv(int a, int b) { return (a + b - 1) / b; }

    private static long ceilDiv(long a, long b) { return (a + b - 1) / b; }

    static double round(double v, int places) {
        if (!Double.isFinite(v)) return v;
        return java.math.BigDecimal.valueOf(v).setScale(places, java.math.RoundingMode.HALF_EVEN).doubleValue();
    }

    private static String fmt(double v) {
        return String.format(java.util.Locale.ROOT, "%.4f", v);
    }
}
