package dev.qlora4j.model;

import dev.qlora4j.Golden;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.LossEvaluator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftModel;
import dev.qlora4j.peft.config.InitLoraWeights;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.quant.QuantType;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;
import dev.qlora4j.train.DeviceTraining;
import dev.qlora4j.train.TrainingArguments;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Runs a tiny golden model through everything a split model must do the same as an unsplit one: prefill logits of
 * a left-padded batch, greedy generation (prefill + decode against the KV cache), the loss, LoRA training steps with
 * gradient checkpointing off and on (packed rows), one clipped AdamW step, evaluation and the saved adapter. The
 * CPU test and the GPU test compare a {@link ModelDevices#split} run with a {@link ModelDevices#single} one.
 */
final class MultiDeviceHarness {
    private MultiDeviceHarness() {}

    /** Everything a run produced, on the host. */
    record Run(float[] logits, int[][] tokens, double loss, double trainLoss, double trainLossCheckpointed,
               List<String> names, List<float[]> grads, List<float[]> gradsCheckpointed, float gradNorm,
               List<float[]> afterStep, double evalLoss, byte[] adapterWeights, String adapterConfig) {}

    static final LoraConfig LORA = LoraConfig.builder().r(4).loraAlpha(8).targetModules(new ModuleSelector.AllLinear())
            .initLoraWeights(new InitLoraWeights.Flag(false)).build();

    /** NF4 with double quantization, float32 compute (bnb_4bit_compute_dtype=float32). */
    static LinearFactory nf4() {
        return new QuantizedLinearFactory(new QuantizationConfig(false, true, 6.0, null, false, false, DType.F32, QuantType.NF4,
                true, DType.U8, 64));
    }

    /** Runs everything; the model is built over devices (on the CPU the checkpoint stays open while it runs). */
    static Run run(String golden, ModelDevices devices, LinearFactory linears, Path tmp, boolean checkpointing) throws IOException {
        Path dir = Golden.dir(golden);
        try (CheckpointReader reader = CheckpointReader.open(dir)) {
            ModelConfig c = ModelConfig.load(dir);
            // On the CPU the weights are views of the mapped checkpoint: it stays open while the model runs.
            TransformerLM m = TransformerLM.load(c, new CheckpointWeights(reader, dir.toString()), devices, linears, LayerResidency.NONE);
            try (PeftModel peft = PeftModel.wrap(m, dir.toString(), LORA, PeftModel.DEFAULT_ADAPTER, 11)) {
                return runModel(m, peft, c, tmp, checkpointing);
            }
        }
    }

    private static Run runModel(TransformerLM m, PeftModel peft, ModelConfig c, Path tmp, boolean checkpointing) throws IOException {
        int vocab = c.vocabSize();
        Random r = new Random(5);
        Path initial = tmp.resolve("initial-adapter");
        peft.save(initial); // gathered from every device before any step
        byte[] initialWeights = Files.readAllBytes(initial.resolve("adapter_model.safetensors"));
        int[][] prompts = {randomIds(r, vocab, 9), randomIds(r, vocab, 5)};
        // inference with the (random, non-zero) adapters active
        peft.train(false);
        float[] logits = prefillLogits(m, prompts);
        GenerationResult gen = new Generator(m, new int[0], 0, ids -> "").generate(prompts, SamplingParams.greedy(6), TokenListener.NONE);
        double loss = new LossEvaluator(m).loss(randomIds(r, vocab, 17)).sum();
        // training
        peft.train(true);
        int batch = 2, t = 16, n = batch * t;
        int[] ids = new int[n], pos = new int[n], segs = new int[n], targets = new int[n];
        for (int i = 0; i < n; i++) {
            int row = i / t, j = i % t, seg = row == 0 && j >= 7 ? 1 : 0;
            ids[i] = r.nextInt(vocab);
            segs[i] = seg;
            pos[i] = seg == 1 ? j - 7 : j;
            targets[i] = j == t - 1 || (row == 0 && j == 6) ? -100 : r.nextInt(vocab);
        }
        List<Param> params = peft.trainableParameters();
        List<String> names = new ArrayList<>();
        for (Param p : params) names.add(p.name());
        peft.setStep(3);
        double trainLoss = m.trainStep(ids, pos, segs, targets, batch, false, 1f / 27).lossSum();
        List<float[]> grads = grads(m, params);
        peft.zeroGrad();
        peft.setStep(3);
        double trainLossCk = m.trainStep(ids, pos, segs, targets, batch, checkpointing, 1f / 27).lossSum();
        List<float[]> gradsCk = grads(m, params);
        // one clipped AdamW step (max_grad_norm small enough that clipping scales)
        TrainingArguments args = TrainingArguments.defaults(tmp.resolve("run")).with(Map.of("optim", "adamw_torch",
                "learning_rate", 1e-2, "weight_decay", 0.1, "max_grad_norm", 0.05));
        Optimizer opt = DeviceTraining.optimizerFactory(m.devices()).create(args, params);
        float norm = DeviceTraining.gradClipper(m.devices()).clip(params, args.maxGradNorm());
        opt.setLr(args.learningRate());
        opt.step();
        List<float[]> after = new ArrayList<>();
        for (Param p : params) after.add(m.backendFor(p.name()).toHost(p.value()).toFloatArray());
        peft.zeroGrad();
        double evalLoss = m.evalStep(ids, pos, segs, targets, batch).sum();
        return new Run(logits, gen.outputIds(), loss, trainLoss, trainLossCk, names, grads, gradsCk, norm, after, evalLoss,
                initialWeights, Files.readString(initial.resolve("adapter_config.json")));
    }

    private static int[] randomIds(Random r, int vocab, int n) {
        int[] a = new int[n];
        for (int i = 0; i < n; i++) a[i] = r.nextInt(vocab);
        return a;
    }

    /** Logits [B*T, vocab] of one prefill over left-padded prompts, through a KV cache. */
    private static float[] prefillLogits(TransformerLM m, int[][] prompts) {
        Backend b = m.backend();
        int batch = prompts.length, len = 0;
        for (int[] p : prompts) len = Math.max(len, p.length);
        int[] ids = new int[batch * len], pos = new int[batch * len], pads = new int[batch];
        for (int row = 0; row < batch; row++) {
            int pad = len - prompts[row].length;
            pads[row] = pad;
            for (int j = 0; j < len; j++) {
                ids[row * len + j] = j < pad ? 0 : prompts[row][j - pad];
                pos[row * len + j] = j < pad ? 1 : j - pad;
            }
        }
        try (KvCache cache = m.newCache(batch, len);
             Tensor idT = b.upload(Tensor.ofInts(ids, ids.length));
             Tensor posT = b.upload(Tensor.ofInts(pos, pos.length));
             Tensor padT = b.upload(Tensor.ofInts(pads, batch));
             Tensor hidden = m.forward(idT, posT, cache, 0, padT);
             Tensor logits = m.logits(hidden)) {
            return b.toHost(logits).toFloatArray();
        }
    }

    private static List<float[]> grads(TransformerLM m, List<Param> params) {
        List<float[]> out = new ArrayList<>();
        for (Param p : params) out.add(p.grad() == null ? new float[0] : m.backendFor(p.name()).toHost(p.grad()).toFloatArray());
        return out;
    }

    /**
     * Asserts the split run equals the single one: token ids and the saved adapter exactly; numbers within rel of
     * the largest magnitude of each array (0 asks for bit-identical values).
     */
    static void assertSameRun(Run single, Run split, double rel) {
        assertClose(single.logits(), split.logits(), rel, "prefill logits");
        for (int i = 0; i < single.tokens().length; i++) assertArrayEquals(single.tokens()[i], split.tokens()[i], "greedy tokens of row " + i);
        assertClose(single.loss(), split.loss(), rel, "loss");
        assertClose(single.trainLoss(), split.trainLoss(), rel, "training loss");
        assertClose(single.trainLossCheckpointed(), split.trainLossCheckpointed(), rel, "training loss (checkpointed)");
        assertEquals(single.names(), split.names(), "trainable parameter names");
        for (int i = 0; i < single.grads().size(); i++) {
            assertClose(single.grads().get(i), split.grads().get(i), rel, "gradient of " + single.names().get(i));
            assertClose(single.gradsCheckpointed().get(i), split.gradsCheckpointed().get(i), rel,
                    "gradient (checkpointed) of " + single.names().get(i));
        }
        assertClose(single.gradNorm(), split.gradNorm(), rel, "gradient norm");
        for (int i = 0; i < single.afterStep().size(); i++) {
            assertClose(single.afterStep().get(i), split.afterStep().get(i), rel, "after one AdamW step: " + single.names().get(i));
        }
        assertClose(single.evalLoss(), split.evalLoss(), rel, "eval loss");
        assertArrayEquals(single.adapterWeights(), split.adapterWeights(), "adapter_model.safetensors (saved before training)");
        assertEquals(single.adapterConfig(), split.adapterConfig(), "adapter_config.json");
    }

    static void assertClose(float[] a, float[] b, double rel, String what) {
        assertEquals(a.length, b.length, what + ": length");
        double scale = 0;
        for (float v : a) scale = Math.max(scale, Math.abs(v));
        for (int i = 0; i < a.length; i++) {
            if (rel == 0) assertEquals(Float.floatToIntBits(a[i]), Float.floatToIntBits(b[i]), what + "[" + i + "]: " + a[i] + " vs " + b[i]);
            else assertEquals(a[i], b[i], rel * scale, what + "[" + i + "]");
        }
    }

    static void assertClose(double a, double b, double rel, String what) {
        if (rel == 0) assertEquals(a, b, what);
        else assertEquals(a, b, rel * Math.max(1e-30, Math.abs(a)), what);
    }
}
