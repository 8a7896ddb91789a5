package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.optim.Param;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * One bottleneck adapter (AdapterHub's Adapter module): u = up(act(down(input))) with
 * down [bottleneck, hidden] + bias and up [hidden, bottleneck] + bias, output
 * dropout(scaling * u). Sequential (Houlsby/Pfeiffer): input = the sublayer output h and the
 * result is h + dropout(s u). Parallel (He et al.): input = the sublayer input and the result is
 * sublayerOut + dropout(s u). The scaling is a constant or one learned scalar.
 */
public final class BottleneckAdapter implements AutoCloseable {
    private final String prefix;             // "base_model.model.model.layers.N.attention_adapter."
    private final TrainableTensor down;      // [bottleneck, hidden]
    private final TrainableTensor downBias;  // [bottleneck]
    private final TrainableTensor up;        // [hidden, bottleneck]
    private final TrainableTensor upBias;    // [hidden]
    private final TrainableTensor learnedScaling; // [1] or null
    private final double fixedScaling;
    private final Activation act;
    private final boolean parallel;
    private final double dropout;

    BottleneckAdapter(String prefix, TrainableTensor down, TrainableTensor downBias, TrainableTensor up, TrainableTensor upBias,
                      TrainableTensor learnedScaling, double fixedScaling, Activation act, boolean parallel, double dropout) {
        this.prefix = prefix;
        this.down = down;
        this.downBias = downBias;
        this.up = up;
        this.upBias = upBias;
        this.learnedScaling = learnedScaling;
        this.fixedScaling = fixedScaling;
        this.act = act;
        this.parallel = parallel;
        this.dropout = dropout;
    }

    public TrainableTensor down() { return down; }
    public TrainableTensor downBias() { return downBias; }
    public TrainableTensor up() { return up; }
    public TrainableTensor upBias() { return upBias; }
    public TrainableTensor learnedScaling() { return learnedScaling; }
    public boolean parallel() { return parallel; }

    /** The current output scale (the learned scalar's value, or the constant). */
    public float scaling(Backend b) {
        return learnedScaling == null ? (float) fixedScaling : learnedScaling.hostValues(b)[0];
    }

    /** File keys / parameter names (the adapter name is not part of them: one bottleneck adapter per model). */
    public List<String> keys() {
        List<String> k = new ArrayList<>(List.of(prefix + "down.weight", prefix + "down.bias", prefix + "up.weight", prefix + "up.bias"));
        if (learnedScaling != null) k.add(prefix + "scaling");
        return k;
    }

    List<TrainableTensor> tensors() {
        List<TrainableTensor> t = new ArrayList<>(List.of(down, downBias, up, upBias));
        if (learnedScaling != null) t.add(learnedScaling);
        return t;
    }

    public List<Param> parameters() {
        List<Param> out = new ArrayList<>();
        List<String> keys = keys();
        List<TrainableTensor> ts = tensors();
        for (int i = 0; i < keys.size(); i++) out.add(ts.get(i).param(keys.get(i)));
        return out;
    }

    /** sublayerIn, sublayerOut [n, hidden] -> the adapted sublayer output. */
    Tensor forward(Backend b, Tensor sublayerIn, Tensor sublayerOut, boolean training, long seed) {
        Tensor input = parallel ? sublayerIn : sublayerOut;
        Tensor z = b.linear(input, down.value(), downBias.value());
        Tensor a = act.forward(b, z);
        Tensor u = b.linear(a, up.value(), upBias.value());
        Tensor su = b.scale(u, scaling(b));
        Tensor d = training && dropout > 0 ? b.dropout(su, (float) dropout, seed) : su;
        Tensor out = b.add(sublayerOut, d);
        close(z, a, u, su, d == su ? null : d);
        return out;
    }

    /** Returns {d/d sublayerOut, d/d sublayerIn (parallel only, else null)} and accumulates the parameter gradients. */
    LayerHooks.HookGrads backward(Backend b, Tensor sublayerIn, Tensor sublayerOut, Tensor gradOut, boolean training, long seed) {
        Tensor input = parallel ? sublayerIn : sublayerOut;
        Tensor z = b.linear(input, down.value(), downBias.value());
        Tensor a = act.forward(b, z);
        boolean drop = training && dropout > 0;
        Tensor gsu = drop ? b.dropout(gradOut, (float) dropout, seed) : gradOut;   // d/d (s u)
        float s = scaling(b);
        if (learnedScaling != null) {
            // d/d s = sum(gsu * u)
            Tensor u = b.linear(a, up.value(), upBias.value());
            Tensor prod = b.mul(gsu, u);
            try (Tensor col = b.zeros(dev.qlora4j.tensor.DType.F32, prod.dim(1))) {
                b.sumRowsInto(prod, col);
                double sum = 0;
                for (float v : b.toHost(col).toFloatArray()) sum += v;
                Tensor g = learnedScaling.gradForAccumulation(b);
                try (Tensor one = b.upload(Tensor.of(new float[] {(float) sum}, 1))) {
                    b.addInPlace(g, one);
                }
            }
            close(u, prod);
        }
        Tensor gu = b.scale(gsu, s);
        b.linearBackwardWeight(gu, a, up.gradForAccumulation(b));
        b.sumRowsInto(gu, upBias.gradForAccumulation(b));
        Tensor ga = b.linearBackwardInput(gu, up.value());
        Tensor gz = act.backward(b, z, ga);
        b.linearBackwardWeight(gz, input, down.gradForAccumulation(b));
        b.sumRowsInto(gz, downBias.gradForAccumulation(b));
        Tensor gInput = b.linearBackwardInput(gz, down.value());
        close(z, a, gsu == gradOut ? null : gsu, gu, ga, gz);
        if (parallel) return new LayerHooks.HookGrads(gradOut, gInput);
        Tensor gh = b.add(gradOut, gInput);   // the residual inside the adapter plus the adapter path
        gInput.close();
        return new LayerHooks.HookGrads(gh, null);
    }

    void zeroGrad() { tensors().forEach(TrainableTensor::zeroGrad); }

    long numel() {
        long n = 0;
        for (TrainableTensor t : tensors()) n += t.numel();
        return n;
    }

    private static void close(Tensor... ts) {
        for (Tensor t : ts) if (t != null) t.close();
    }

    @Override
    public void close() { tensors().forEach(TrainableTensor::close); }
}
