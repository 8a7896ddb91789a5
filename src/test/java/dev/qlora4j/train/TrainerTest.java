package dev.qlora4j.train;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.optim.GradClip;
import dev.qlora4j.optim.LrSchedule;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TrainerTest {
    @TempDir Path tmp;

    private static final ObjectMapper JSON = new ObjectMapper();

    /** n examples of 3..9 tokens; every third has its first two labels masked (a "prompt"). */
    static List<Example> examples(int n, long seed) {
        Random r = new Random(seed);
        List<Example> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            int len = 3 + r.nextInt(7);
            int[] ids = new int[len];
            for (int t = 0; t < len; t++) ids[t] = r.nextInt(30);
            int[] labels = ids.clone();
            if (i % 3 == 0) labels[0] = labels[1] = Example.IGNORE;
            out.add(new Example(ids, labels, i + 1));
        }
        return out;
    }

    private TrainingArguments args(Path out, Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("output_dir", out.toString());
        m.put("learning_rate", 0.05);
        m.put("logging_steps", 1);
        m.put("save_strategy", "no");
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return TrainingArguments.of(m);
    }

    private static Trainer.Result run(FakeModel model, TrainingArguments a, List<Example> train, List<Example> eval) {
        return Trainer.builder(model, a).trainData(train).evalData(eval).padTokenId(0).build().train();
    }

    private static List<JsonNode> metrics(Path out) throws Exception {
        List<JsonNode> l = new ArrayList<>();
        for (String line : Files.readAllLines(out.resolve("metrics.jsonl"))) l.add(JSON.readTree(line));
        return l;
    }

    @Test
    void stepsPerEpochAndAccumulationGroupsFollowTransformers() throws Exception {
        // 10 rows, batch 3 -> 4 micro-batches per epoch; GA 3 -> updates of 3 and 1 micro-batches
        FakeModel m = new FakeModel();
        Path out = tmp.resolve("o");
        Trainer.Result r = run(m, args(out, "per_device_train_batch_size", 3, "gradient_accumulation_steps", 3,
                "num_train_epochs", 2), examples(10, 1), null);
        assertEquals(4, r.globalStep());
        assertEquals(8, m.calls.size());
        // micro-batches of one optimizer step share one gradScale = 1 / (their trained tokens)
        int[] groups = {3, 1, 3, 1};
        int call = 0;
        for (int g : groups) {
            long total = 0;
            for (int i = 0; i < g; i++) total += m.calls.get(call + i).tokens();
            float sumScaled = 0;
            for (int i = 0; i < g; i++) {
                assertEquals(1.0f / total, m.calls.get(call + i).gradScale());
                sumScaled += m.calls.get(call + i).tokens() * m.calls.get(call + i).gradScale();
            }
            assertEquals(1.0, sumScaled, 1e-6);
            call += g;
        }
        List<Double> epochs = new ArrayList<>();
        for (JsonNode n : metrics(out)) if (n.has("loss")) epochs.add(n.get("epoch").asDouble());
        assertEquals(List.of(0.75, 1.0, 1.75, 2.0), epochs);
    }

    @Test
    void accumulationEqualsOneBigBatch() {
        // token-normalized accumulation: 2 x 2 rows accumulated == 4 rows at once (sgd, no clipping)
        List<Example> data = examples(8, 2);
        FakeModel a = new FakeModel(), b = new FakeModel();
        a.noise = b.noise = false;
        run(a, args(tmp.resolve("a"), "per_device_train_batch_size", 2, "gradient_accumulation_steps", 2, "max_steps", 4,
                "optim", "sgd", "max_grad_norm", 0, "lr_scheduler_type", "constant"), data, null);
        run(b, args(tmp.resolve("b"), "per_device_train_batch_size", 4, "gradient_accumulation_steps", 1, "max_steps", 4,
                "optim", "sgd", "max_grad_norm", 0, "lr_scheduler_type", "constant"), data, null);
        for (int i = 0; i < FakeModel.V; i++) assertEquals(b.w[i], a.w[i], 2e-6, "w[" + i + "]");
        assertEquals(b.bias[0], a.bias[0], 2e-6);
    }

    @Test
    void dataOrderIsAFunctionOfSeedAndEpochOnly() {
        List<Example> data = examples(7, 3);
        FakeModel a = new FakeModel(), b = new FakeModel(), c = new FakeModel();
        run(a, args(tmp.resolve("a"), "per_device_train_batch_size", 1, "num_train_epochs", 2, "seed", 5), data, null);
        run(b, args(tmp.resolve("b"), "per_device_train_batch_size", 1, "num_train_epochs", 2, "seed", 5), data, null);
        run(c, args(tmp.resolve("c"), "per_device_train_batch_size", 1, "num_train_epochs", 2, "seed", 6), data, null);
        List<int[]> ia = a.calls.stream().map(FakeModel.Call::ids).toList();
        List<int[]> ib = b.calls.stream().map(FakeModel.Call::ids).toList();
        for (int i = 0; i < ia.size(); i++) assertArrayEquals(ia.get(i), ib.get(i));
        // the order of each epoch is exactly DataOrder's permutation of (seed, epoch)
        for (int epoch = 0; epoch < 2; epoch++) {
            int[] perm = DataOrder.permutation(7, 5, epoch);
            for (int k = 0; k < 7; k++) assertArrayEquals(data.get(perm[k]).ids(), ia.get(epoch * 7 + k));
        }
        assertFalse(java.util.Arrays.equals(DataOrder.permutation(7, 5, 0), DataOrder.permutation(7, 5, 1)), "epochs reshuffle");
        boolean differs = false;
        for (int i = 0; i < ia.size(); i++) differs |= !java.util.Arrays.equals(ia.get(i), c.calls.get(i).ids());
        assertTrue(differs, "another seed gives another order");
        // dropout seeds: a function of (seed, step, micro-batch)
        assertEquals(DataOrder.stepSeed(5, 0, 0), a.calls.get(0).seed());
        assertEquals(DataOrder.stepSeed(5, 3, 0), a.calls.get(3).seed());
    }

    @Test
    void learningRateFollowsTheScheduleWithWarmup() throws Exception {
        Path out = tmp.resolve("o");
        run(new FakeModel(), args(out, "per_device_train_batch_size", 2, "max_steps", 10, "warmup_steps", 3,
                "learning_rate", 0.01), examples(6, 4), null);
        LrSchedule s = LrSchedule.linear(3, 10);
        List<JsonNode> logs = metrics(out).stream().filter(n -> n.has("loss")).toList();
        assertEquals(10, logs.size());
        for (int i = 0; i < 10; i++) {
            assertEquals(i + 1, logs.get(i).get("step").asInt());
            // transformers logs the rate the step used: factor(step - 1)
            assertEquals(s.lr(0.01, i), logs.get(i).get("learning_rate").asDouble(), 0.0, "step " + (i + 1));
        }
        assertEquals(0.0, logs.get(0).get("learning_rate").asDouble());
        assertEquals(0.01, logs.get(3).get("learning_rate").asDouble(), 1e-15);

        Path out2 = tmp.resolve("o2");
        run(new FakeModel(), args(out2, "per_device_train_batch_size", 2, "max_steps", 10, "warmup_ratio", 0.25,
                "lr_scheduler_type", "cosine", "learning_rate", 0.01), examples(6, 4), null);
        LrSchedule c = LrSchedule.cosine(3, 10); // ceil(0.25 * 10) = 3 warmup steps
        List<JsonNode> logs2 = metrics(out2).stream().filter(n -> n.has("loss")).toList();
        for (int i = 0; i < 10; i++) assertEquals(c.lr(0.01, i), logs2.get(i).get("learning_rate").asDouble(), 0.0);
    }

    @Test
    void gradientsAreClippedToMaxGradNormAndThePreClipNormIsLogged() throws Exception {
        // sgd with lr 1 and a constant schedule: the update is exactly minus the clipped gradient
        FakeModel m = new FakeModel();
        m.gain = 50;
        Path out = tmp.resolve("o");
        float[] w0 = m.w.clone();
        float b0 = m.bias[0];
        List<Float> normsSeen = new ArrayList<>();
        Trainer.builder(m, args(out, "per_device_train_batch_size", 4, "max_steps", 1, "optim", "sgd", "learning_rate", 1.0,
                        "lr_scheduler_type", "constant", "max_grad_norm", 0.5))
                .trainData(examples(4, 5))
                .gradClipper((p, max) -> {
                    // the pre-clip norm, computed here in double from the raw gradients
                    double s = 0;
                    for (float g : m.gw) s += (double) g * g;
                    s += (double) m.gbias[0] * m.gbias[0];
                    normsSeen.add((float) Math.sqrt(s));
                    return GradClip.clipByGlobalNorm(p, max);
                })
                .build().train();
        assertTrue(normsSeen.get(0) > 0.5, "the test needs a gradient larger than max_grad_norm: " + normsSeen);
        double update = 0;
        for (int i = 0; i < FakeModel.V; i++) update += Math.pow(m.w[i] - w0[i], 2);
        update += Math.pow(m.bias[0] - b0, 2);
        assertEquals(0.5, Math.sqrt(update), 1e-5, "update norm = max_grad_norm");
        JsonNode log = metrics(out).get(0);
        assertEquals(normsSeen.get(0), log.get("grad_norm").floatValue(), 1e-4 * normsSeen.get(0));
    }

    @Test
    void loggingEvalAndSaveCadence() throws Exception {
        FakeModel m = new FakeModel();
        Path out = tmp.resolve("o");
        List<Example> evalSet = examples(5, 9);
        run(m, args(out, "per_device_train_batch_size", 2, "max_steps", 10, "logging_steps", 3, "eval_strategy", "steps",
                "eval_steps", 4, "save_strategy", "steps", "save_steps", 5, "per_device_eval_batch_size", 2), examples(9, 6), evalSet);
        List<JsonNode> logs = metrics(out);
        List<Integer> trainSteps = new ArrayList<>(), evalSteps = new ArrayList<>();
        for (JsonNode n : logs) {
            if (n.has("loss")) trainSteps.add(n.get("step").asInt());
            if (n.has("eval_loss")) evalSteps.add(n.get("step").asInt());
        }
        assertEquals(List.of(3, 6, 9), trainSteps);
        assertEquals(List.of(4, 8, 10), evalSteps, "every eval_steps, plus the final evaluation");
        assertTrue(logs.get(logs.size() - 1).has("train_loss"), "the run ends with the summary entry");
        assertEquals(List.of(Checkpoints.dir(out, 5), Checkpoints.dir(out, 10)), Checkpoints.list(out));
        // eval batches: ceil(5 / 2) = 3 per evaluation
        assertEquals(List.of(2, 2, 1, 2, 2, 1, 2, 2, 1), m.evalBatches);

        // logged loss = mean of the per-step token-mean losses since the last log, rounded to 4 places
        List<Double> stepLoss = new ArrayList<>();
        for (FakeModel.Call c : m.calls) stepLoss.add(c.lossSum() / c.tokens());
        double mean = (stepLoss.get(3) + stepLoss.get(4) + stepLoss.get(5)) / 3;
        assertEquals(Trainer.round(mean, 4), logs.stream().filter(n -> n.has("loss")).toList().get(1).get("loss").asDouble(), 0.0);
        double trainLoss = stepLoss.stream().mapToDouble(Double::doubleValue).sum() / 10;
        assertEquals(trainLoss, logs.get(logs.size() - 1).get("train_loss").asDouble(), 1e-12);

        // the checkpoint holds what a resume needs, trainer_state.json in transformers' shape
        Path c5 = Checkpoints.dir(out, 5);
        for (String f : List.of("adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "scheduler.json",
                "trainer_state.json", "training_args.json", Checkpoints.TRAINER_FILE)) {
            assertTrue(Files.isRegularFile(c5.resolve(f)), f);
        }
        JsonNode st = JSON.readTree(c5.resolve("trainer_state.json").toFile());
        assertEquals(5, st.get("global_step").asInt());
        assertEquals(10, st.get("max_steps").asInt());
        assertEquals(3, st.get("logging_steps").asInt());
        assertEquals(4, st.get("eval_steps").asInt());
        assertEquals(5, st.get("save_steps").asInt());
        assertEquals(2, st.get("train_batch_size").asInt());
        assertEquals(2, st.get("log_history").size(), "the step-3 log and the step-4 evaluation");
        assertEquals(1.0, st.get("epoch").asDouble(), 1e-12, "5 steps of 1 micro-batch = one epoch of 5 micro-batches");
        // final output
        assertTrue(Files.isRegularFile(out.resolve("adapter_model.safetensors")));
        JsonNode all = JSON.readTree(out.resolve("all_results.json").toFile());
        assertTrue(all.has("train_loss") && all.has("eval_loss") && all.has("train_runtime"));
        byte[] png = Files.readAllBytes(out.resolve(LossCurve.FILE));
        assertTrue(png.length > 1000);
        assertArrayEquals(new byte[] {(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}, java.util.Arrays.copyOf(png, 8));
        // metrics.jsonl mirrors log_history
        JsonNode finalState = JSON.readTree(out.resolve("trainer_state.json").toFile());
        assertEquals(logs.size(), finalState.get("log_history").size());
        for (int i = 0; i < logs.size(); i++) assertEquals(logs.get(i), finalState.get("log_history").get(i));
    }

    @Test
    void evalLossIsTokenWeighted() throws Exception {
        FakeModel m = new FakeModel();
        Path out = tmp.resolve("o");
        List<Example> evalSet = examples(7, 11);
        float[] w0 = m.w.clone();
        float b0 = m.bias[0];
        run(m, args(out, "per_device_train_batch_size", 2, "max_steps", 1, "eval_strategy", "steps", "eval_steps", 1,
                "learning_rate", 0.0, "per_device_eval_batch_size", 3), examples(4, 6), evalSet);
        assertArrayEquals(w0, m.w, "learning_rate 0 leaves the parameters as they were");
        JsonNode e = metrics(out).stream().filter(n -> n.has("eval_loss")).findFirst().orElseThrow();
        assertEquals(FakeModel.meanLoss(w0, b0, evalSet), e.get("eval_loss").asDouble(), 1e-12);
        long tokens = evalSet.stream().mapToLong(Example::trainedTokens).sum();
        assertEquals(tokens, e.get("eval_tokens").asLong());
    }

    @Test
    void saveTotalLimitKeepsTheNewest() throws Exception {
        Path out = tmp.resolve("o");
        List<String> notes = new ArrayList<>();
        Trainer.builder(new FakeModel(), args(out, "per_device_train_batch_size", 2, "max_steps", 10, "save_strategy", "steps",
                        "save_steps", 2, "save_total_limit", 2))
                .trainData(examples(6, 7)).messages(notes::add).build().train();
        assertEquals(List.of(Checkpoints.dir(out, 8), Checkpoints.dir(out, 10)), Checkpoints.list(out));
        assertTrue(notes.stream().anyMatch(s -> s.contains("deleted") && s.contains("checkpoint-2")), notes.toString());
        try (var s = Files.list(out)) {
            assertTrue(s.noneMatch(p -> p.getFileName().toString().endsWith(".tmp")), "no temp folders are left");
        }
    }

    @Test
    void resumedRunEndsBitIdenticalWithTheSameMetrics() throws Exception {
        // 11 rows, batch 2, GA 2: 6 micro-batches = 3 optimizer steps an epoch; checkpoints at 3 and 6;
        // the crash hits step 8 (its second micro-batch: calls 0..13 are steps 1..7)
        assertResumeMatches(11, 15, 12, List.of(3L, 6L), "per_device_train_batch_size", 2, "gradient_accumulation_steps", 2,
                "max_steps", 10, "warmup_steps", 2, "weight_decay", 0.1, "max_grad_norm", 0.3, "logging_steps", 2,
                "eval_strategy", "steps", "eval_steps", 4, "save_strategy", "steps", "save_steps", 3);
    }

    @Test
    void resumeAtAnEpochEndReplaysTheEpochEndLogAndEvaluation() throws Exception {
        // 9 rows, batch 2: 5 steps an epoch; the step-5 checkpoint is written before the epoch-end log and evaluation,
        // so the resumed run must produce those from the restored state
        assertResumeMatches(9, 7, 5, List.of(5L), "per_device_train_batch_size", 2, "num_train_epochs", 3,
                "logging_strategy", "epoch", "eval_strategy", "epoch", "save_strategy", "steps", "save_steps", 5,
                "lr_scheduler_type", "cosine", "warmup_ratio", 0.1, "optim", "adamw_8bit");
    }

    /**
     * Trains once without interruption and once with a crash at trainStep call {@code crashAtCall}
     * followed by resume_from_checkpoint "latest" into a fresh model; both must end with the same
     * parameters bit for bit and the same metrics (timings aside).
     */
    private void assertResumeMatches(int rows, int crashAtCall, int resumedFromCall, List<Long> checkpoints, Object... common)
            throws Exception {
        List<Example> data = examples(rows, 8);
        List<Example> evalSet = examples(4, 12);
        FakeModel full = new FakeModel();
        Path outA = tmp.resolve("a");
        run(full, args(outA, common), data, evalSet);

        FakeModel first = new FakeModel();
        first.crashAtCall = crashAtCall;
        Path outB = tmp.resolve("b");
        assertThrows(IllegalStateException.class, () -> run(first, args(outB, common), data, evalSet));
        assertEquals(checkpoints.stream().map(s -> Checkpoints.dir(outB, s)).toList(), Checkpoints.list(outB));
        FakeModel second = new FakeModel(); // fresh parameters: everything must come from the checkpoint
        List<Object> resumeArgs = new ArrayList<>(List.of(common));
        resumeArgs.addAll(List.of("resume_from_checkpoint", "latest"));
        run(second, args(outB, resumeArgs.toArray()), data, evalSet);

        assertArrayEquals(full.w, second.w);
        assertEquals(full.bias[0], second.bias[0]);
        // the resumed part saw exactly the batches and dropout seeds of the uninterrupted run
        assertEquals(full.calls.size() - resumedFromCall, second.calls.size());
        for (int i = 0; i < second.calls.size(); i++) {
            FakeModel.Call a = full.calls.get(resumedFromCall + i), b = second.calls.get(i);
            assertArrayEquals(a.ids(), b.ids());
            assertEquals(a.seed(), b.seed());
            assertEquals(a.gradScale(), b.gradScale());
        }
        List<JsonNode> ma = metrics(outA), mb = metrics(outB);
        assertEquals(ma.size(), mb.size());
        for (int i = 0; i < ma.size(); i++) {
            assertEquals(deterministic(ma.get(i)), deterministic(mb.get(i)), "metrics line " + i);
        }
        assertTrue(ma.stream().anyMatch(n -> n.has("eval_loss")) && ma.stream().anyMatch(n -> n.has("loss")));
    }

    /** A log entry without its timing fields. */
    private static Map<String, JsonNode> deterministic(JsonNode n) {
        Map<String, JsonNode> m = new HashMap<>();
        n.properties().forEach(e -> {
            String k = e.getKey();
            if (!k.contains("runtime") && !k.contains("per_second")) m.put(k, e.getValue());
        });
        return m;
    }

    @Test
    void nanLossStopsBeforeTheOptimizerStepWithAClearMessage() throws Exception {
        FakeModel m = new FakeModel();
        m.nanAtCall = 3; // step 4 with one micro-batch per step
        Path out = tmp.resolve("o");
        List<Example> data = examples(8, 10);
        TrainingArguments a = args(out, "per_device_train_batch_size", 2, "max_steps", 8, "save_strategy", "steps", "save_steps", 2);
        float[][] before = new float[1][];
        TrainingDivergedException e = assertThrows(TrainingDivergedException.class, () ->
                Trainer.builder(m, a).trainData(data).progress(new ProgressReporter() {
                    @Override public void start(long step, long maxSteps) { }
                    @Override public void step(long step, double loss, double lr, double tps) { if (step == 3) before[0] = m.w.clone(); }
                    @Override public void log(Map<String, Object> entry) { }
                    @Override public void message(String text) { }
                    @Override public void close() { }
                }).build().train());
        assertEquals(4, e.step());
        String msg = e.getMessage();
        assertTrue(msg.contains("step 4") && msg.contains("NaN"), msg);
        assertTrue(msg.contains("learning_rate") && msg.contains("warmup") && msg.contains("bf16"), msg);
        assertTrue(msg.contains("checkpoint-2"), "names the last good checkpoint: " + msg);
        assertTrue(msg.contains("data lines"), msg);
        assertArrayEquals(before[0], m.w, "no optimizer step after the NaN");
        assertEquals(List.of(Checkpoints.dir(out, 2)), Checkpoints.list(out));
        assertFalse(Files.exists(out.resolve("adapter_model.safetensors")), "no final adapter from a diverged run");
    }

    @Test
    void packingTrainsOnPackedRowsWithSegments() {
        FakeModel m = new FakeModel();
        List<Example> data = examples(10, 13);
        run(m, args(tmp.resolve("o"), "per_device_train_batch_size", 1, "num_train_epochs", 1, "packing", true, "max_seq_length", 16), data, null);
        List<TrainRow> rows = Packer.pack(data, 16);
        assertEquals(rows.size(), m.calls.size(), "one epoch = one call per packed row");
        assertTrue(rows.size() < data.size());
        long tokens = 0;
        int maxSegments = 0;
        for (FakeModel.Call c : m.calls) {
            assertTrue(c.seqLen() <= 16);
            tokens += c.tokens();
            if (c.segments() != null) maxSegments = Math.max(maxSegments, (int) java.util.Arrays.stream(c.segments()).distinct().count());
        }
        assertTrue(maxSegments >= 2, "packed rows hold several examples");
        assertEquals(data.stream().mapToLong(Example::trainedTokens).sum(), tokens, "every trained token once, none across examples");
    }

    @Test
    void trainingReducesTheLoss() {
        FakeModel m = new FakeModel();
        List<Example> data = examples(12, 14);
        float[] w0 = m.w.clone();
        double before = FakeModel.meanLoss(w0, m.bias[0], data);
        run(m, args(tmp.resolve("o"), "per_device_train_batch_size", 4, "num_train_epochs", 20, "learning_rate", 0.02,
                "logging_steps", 10), data, null);
        double after = FakeModel.meanLoss(m.w, m.bias[0], data);
        assertTrue(after < before / 2, before + " -> " + after);
    }

    @Test
    void missingEvalDataForAnEvalStrategyIsAnError() {
        var e = assertThrows(IllegalArgumentException.class, () -> Trainer.builder(new FakeModel(),
                args(tmp.resolve("o"), "eval_strategy", "steps")).trainData(examples(2, 1)).build());
        assertTrue(e.getMessage().contains("eval_strategy"), e.getMessage());
    }

    @Test
    void resumeLatestWithoutCheckpointsSaysWhatToDo() {
        var e = assertThrows(IllegalArgumentException.class, () -> run(new FakeModel(),
                args(tmp.resolve("o"), "resume_from_checkpoint", "latest", "max_steps", 1), examples(2, 1), null));
        assertTrue(e.getMessage().contains("no complete checkpoint"), e.getMessage());
    }
}
