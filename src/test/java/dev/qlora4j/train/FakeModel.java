package dev.qlora4j.train;

import dev.qlora4j.infer.LossEvaluator.LossSum;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * A trainable model with a known optimum: for every trained target y at input token x, the
 * prediction w[x % V] + bias (+ a small "dropout" offset derived from the step seed) should equal
 * y / 100; the token loss is the squared error. Gradients are exact, so the trainer's arithmetic
 * (scaling, clipping, schedule, optimizer) can be checked against hand computations. Every call is
 * recorded.
 */
final class FakeModel implements TrainableModel {
    static final int V = 8;

    final float[] w = new float[V];
    final float[] gw = new float[V];
    final float[] bias = new float[1];
    final float[] gbias = new float[1];
    private final List<Param> params = List.of(Param.of("model.w.weight", w, gw), Param.of("model.w.bias", bias, gbias));

    /** One record per trainStep call. */
    record Call(long seed, float gradScale, long tokens, int batch, int seqLen, int[] ids, int[] targets, int[] segments, double lossSum) { }

    final List<Call> calls = new ArrayList<>();
    final List<Integer> evalBatches = new ArrayList<>();
    long seed;
    int zeroGrads;
    /** trainStep call index (0-based) that throws, as a crash would; -1 = never. */
    int crashAtCall = -1;
    /** trainStep call index whose loss is NaN; -1 = never. */
    int nanAtCall = -1;
    /** Multiplies the residual: large values make large gradients (clipping tests). */
    float gain = 1;
    /** Off: no seed-dependent offset (runs with different micro-batch splits become comparable). */
    boolean noise = true;

    FakeModel() {
        for (int i = 0; i < V; i++) w[i] = 0.05f * i - 0.1f;
        bias[0] = 0.02f;
    }

    static float targetValue(int y) { return y / 100f; }

    private double offset() {
        return noise ? ((seed >>> 20) % 1000) / 1e5 : 0; // deterministic stand-in for dropout noise
    }

    @Override public List<Param> trainableParameters() { return params; }

    @Override public void setStep(long seed) { this.seed = seed; }

    @Override
    public TransformerLM.StepResult trainStep(Batch b, boolean checkpointing, float gradScale) {
        int call = calls.size();
        if (call == crashAtCall) throw new IllegalStateException("simulated crash at call " + call);
        double sum = 0;
        long tokens = 0;
        double off = offset();
        for (int t = 0; t < b.ids().length; t++) {
            int y = b.targets()[t];
            if (y == Example.IGNORE) continue;
            int x = Math.floorMod(b.ids()[t], V);
            double r = gain * (w[x] + bias[0] + off - targetValue(y));
            sum += r * r;
            float g = (float) (2 * r * gain) * gradScale;
            gw[x] += g;
            gbias[0] += g;
            tokens++;
        }
        if (call == nanAtCall) sum = Double.NaN;
        calls.add(new Call(seed, gradScale, tokens, b.batch(), b.seqLen(), b.ids().clone(), b.targets().clone(),
                b.segments() == null ? null : b.segments().clone(), sum));
        return new TransformerLM.StepResult(sum, tokens, 0);
    }

    @Override
    public LossSum eval(Batch b) {
        evalBatches.add(b.batch());
        double sum = 0;
        long tokens = 0;
        for (int t = 0; t < b.ids().length; t++) {
            int y = b.targets()[t];
            if (y == Example.IGNORE) continue;
            double r = w[Math.floorMod(b.ids()[t], V)] + bias[0] - targetValue(y);
            sum += r * r;
            tokens++;
        }
        return new LossSum(sum, tokens);
    }

    @Override
    public void saveAdapter(Path dir) {
        SafetensorsWriter.write(dir.resolve("adapter_model.safetensors"),
                Map.of("w", Tensor.of(w.clone(), V), "bias", Tensor.of(bias.clone(), 1)), Map.of("format", "pt"));
        try {
            Files.writeString(dir.resolve("adapter_config.json"), "{\"peft_type\": \"FAKE\"}\n");
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Override
    public void loadAdapter(Path dir) {
        try (SafetensorsFile f = SafetensorsFile.open(dir.resolve("adapter_model.safetensors"))) {
            System.arraycopy(f.tensor("w").toFloatArray(), 0, w, 0, V);
            bias[0] = f.tensor("bias").toFloatArray()[0];
        }
    }

    @Override
    public void zeroGrad() {
        Arrays.fill(gw, 0);
        gbias[0] = 0;
        zeroGrads++;
    }

    /** Token-mean loss of examples, computed independently of the trainer (no offset). */
    static double meanLoss(float[] w, float bias, List<Example> examples) {
        double sum = 0;
        long n = 0;
        for (Example e : examples) {
            for (int t = 0; t + 1 < e.length(); t++) {
                int y = e.labels()[t + 1];
                if (y == Example.IGNORE) continue;
                double r = w[Math.floorMod(e.ids()[t], V)] + bias - targetValue(y);
                sum += r * r;
                n++;
            }
        }
        return sum / n;
    }
}
