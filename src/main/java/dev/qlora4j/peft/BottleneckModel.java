package dev.qlora4j.peft;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.BottleneckConfig;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeSet;

/**
 * Bottleneck adapters for a whole decoder (peft has none; AdapterHub's design in peft's file
 * layout, peft_type "BOTTLENECK"): per transformed layer an "attention_adapter" (mh_adapter)
 * after the attention sublayer and/or an "output_adapter" after the MLP, each a
 * {@link BottleneckAdapter}. It is the {@link LayerHooks} the decoder calls. See
 * README-bottleneck.md in this package for the file format.
 */
public final class BottleneckModel implements LayerHooks, AutoCloseable {
    public static final String ATTENTION = "attention_adapter";
    public static final String OUTPUT = "output_adapter";

    private final BottleneckConfig config;
    private final Backend backend;
    private final int numLayers, hidden, bottleneck;
    private final Map<Integer, BottleneckAdapter> attention = new LinkedHashMap<>();
    private final Map<Integer, BottleneckAdapter> output = new LinkedHashMap<>();
    private boolean training;
    private long stepSeed;

    private BottleneckModel(BottleneckConfig config, Backend backend, int numLayers, int hidden) {
        if (config.lnBefore() || config.lnAfter()) {
            throw new IllegalArgumentException("bottleneck ln_before / ln_after (extra layer norms inside the adapter) are not "
                    + "supported; set them to false");
        }
        this.config = config;
        this.backend = backend;
        this.numLayers = numLayers;
        this.hidden = hidden;
        this.bottleneck = config.bottleneckSize(hidden);
    }

    /** Fresh adapters initialized per init_weights ("bert": N(0, 0.02) weights; "mam_adapter": Kaiming down, zero up; "houlsby": N(0, 0.01)). */
    public static BottleneckModel create(BottleneckConfig config, Backend backend, int numLayers, int hidden, long seed) {
        BottleneckModel m = new BottleneckModel(config, backend, numLayers, hidden);
        for (int i = 0; i < numLayers; i++) {
            if (!config.appliesToLayer(i)) continue;
            if (config.mhAdapter()) m.attention.put(i, m.fresh(i, ATTENTION, Seeds.derive(seed, "bottleneck", ATTENTION, Integer.toString(i))));
            if (config.outputAdapter()) m.output.put(i, m.fresh(i, OUTPUT, Seeds.derive(seed, "bottleneck", OUTPUT, Integer.toString(i))));
        }
        return m;
    }

    private BottleneckAdapter fresh(int layer, String kind, long seed) {
        SplittableRandom rng = new SplittableRandom(seed);
        int bn = bottleneck, h = hidden;
        float[] down = new float[bn * h], up = new float[h * bn];
        switch (config.initWeights()) {
            case "bert" -> { gaussian(rng, down, 0.02); gaussian(rng, up, 0.02); }
            case "houlsby" -> { gaussian(rng, down, 0.01); gaussian(rng, up, 0.01); }
            case "mam_adapter" -> {
                double bound = 1 / Math.sqrt(h);   // kaiming_uniform_(a=sqrt(5)) on fan_in = hidden
                for (int i = 0; i < down.length; i++) down[i] = (float) ((rng.nextDouble() * 2 - 1) * bound);
            }
            default -> throw new IllegalArgumentException("unknown init_weights " + config.initWeights());
        }
        return adapter(layer, kind, down, new float[bn], up, new float[h], config.scaling().learned() ? new float[] {1f} : null);
    }

    /** N(0, std^2), truncated at +-2 (torch's trunc_normal_ default bounds; irrelevant for these small std). */
    private static void gaussian(SplittableRandom rng, float[] v, double std) {
        for (int i = 0; i < v.length; i++) {
            double x;
            do x = rng.nextGaussian() * std; while (Math.abs(x) > 2);
            v[i] = (float) x;
        }
    }

    private BottleneckAdapter adapter(int layer, String kind, float[] down, float[] downBias, float[] up, float[] upBias, float[] scaling) {
        Backend b = backend;
        return new BottleneckAdapter(prefix(layer, kind), TrainableTensor.of(b, down, bottleneck, hidden), TrainableTensor.of(b, downBias, bottleneck),
                TrainableTensor.of(b, up, hidden, bottleneck), TrainableTensor.of(b, upBias, hidden),
                scaling == null ? null : TrainableTensor.of(b, scaling, 1), config.scaling().value(),
                Activation.of(config.nonLinearity()), config.isParallel(), config.dropout());
    }

    static String prefix(int layer, String kind) { return PeftKeys.PREFIX + "model.layers." + layer + "." + kind + "."; }

    public BottleneckConfig config() { return config; }

    public BottleneckAdapter attentionAdapter(int layer) { return attention.get(layer); }

    public BottleneckAdapter outputAdapter(int layer) { return output.get(layer); }

    public void train(boolean training) { this.training = training; }

    public void setStep(long seed) { this.stepSeed = seed; }

    private long seed(int layer, String kind) { return Seeds.derive(stepSeed, "bottleneck", kind, Integer.toString(layer)); }

    // ---- LayerHooks ----

    @Override
    public Tensor afterAttention(int layer, Tensor attnIn, Tensor attnOut) {
        BottleneckAdapter a = attention.get(layer);
        return a == null ? attnOut : a.forward(backend, attnIn, attnOut, training, seed(layer, ATTENTION));
    }

    @Override
    public Tensor afterMlp(int layer, Tensor mlpIn, Tensor mlpOut) {
        BottleneckAdapter a = output.get(layer);
        return a == null ? mlpOut : a.forward(backend, mlpIn, mlpOut, training, seed(layer, OUTPUT));
    }

    @Override
    public HookGrads afterAttentionBackward(int layer, Tensor attnIn, Tensor attnOut, Tensor gradOut) {
        BottleneckAdapter a = attention.get(layer);
        return a == null ? new HookGrads(gradOut, null) : a.backward(backend, attnIn, attnOut, gradOut, training, seed(layer, ATTENTION));
    }

    @Override
    public HookGrads afterMlpBackward(int layer, Tensor mlpIn, Tensor mlpOut, Tensor gradOut) {
        BottleneckAdapter a = output.get(layer);
        return a == null ? new HookGrads(gradOut, null) : a.backward(backend, mlpIn, mlpOut, gradOut, training, seed(layer, OUTPUT));
    }

    // ---- parameters ----

    private List<BottleneckAdapter> all() {
        List<BottleneckAdapter> out = new ArrayList<>();
        for (int i = 0; i < numLayers; i++) {
            if (attention.containsKey(i)) out.add(attention.get(i));
            if (output.containsKey(i)) out.add(output.get(i));
        }
        return out;
    }

    public List<Param> trainableParameters() {
        List<Param> out = new ArrayList<>();
        for (BottleneckAdapter a : all()) out.addAll(a.parameters());
        return out;
    }

    public long numel() {
        long n = 0;
        for (BottleneckAdapter a : all()) n += a.numel();
        return n;
    }

    public void zeroGrad() { all().forEach(BottleneckAdapter::zeroGrad); }

    // ---- files ----

    /** adapter_config.json (peft_type BOTTLENECK, inference_mode true) + adapter_model.safetensors (F32). */
    public void save(Path dir, String baseModelNameOrPath) {
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (BottleneckAdapter a : all()) {
            List<String> keys = a.keys();
            List<TrainableTensor> ts = a.tensors();
            for (int i = 0; i < keys.size(); i++) tensors.put(keys.get(i), backend.toHost(ts.get(i).value()));
        }
        try {
            Files.createDirectories(dir);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot create " + dir + ": " + e.getMessage(), e);
        }
        SafetensorsWriter.write(dir.resolve(PeftKeys.WEIGHTS_FILE), tensors, Map.of("format", "pt"));
        PeftConfigs.save(dir, config.withBaseModel(baseModelNameOrPath, config.revision()).withInferenceMode(true));
    }

    /** Reads a BOTTLENECK adapter saved by {@link #save}; every key must be present with the expected shape. */
    public static BottleneckModel load(Path dir, Backend backend, int numLayers, int hidden) {
        PeftConfig pc = PeftConfigs.load(dir);
        if (!(pc instanceof BottleneckConfig cfg)) {
            throw new IllegalArgumentException(dir + ": peft_type " + pc.peftType() + " is not BOTTLENECK; load LoRA adapters with PeftModel");
        }
        BottleneckModel m = new BottleneckModel(cfg, backend, numLayers, hidden);
        Path file = dir.resolve(PeftKeys.WEIGHTS_FILE);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            TreeSet<String> seen = new TreeSet<>();
            for (int i = 0; i < numLayers; i++) {
                if (!cfg.appliesToLayer(i)) continue;
                for (String kind : List.of(ATTENTION, OUTPUT)) {
                    if (kind.equals(ATTENTION) ? !cfg.mhAdapter() : !cfg.outputAdapter()) continue;
                    String p = prefix(i, kind);
                    int bn = m.bottleneck;
                    float[] down = read(f, file, p + "down.weight", seen, bn, hidden), downBias = read(f, file, p + "down.bias", seen, bn);
                    float[] up = read(f, file, p + "up.weight", seen, hidden, bn), upBias = read(f, file, p + "up.bias", seen, hidden);
                    float[] scaling = cfg.scaling().learned() ? read(f, file, p + "scaling", seen, 1) : null;
                    (kind.equals(ATTENTION) ? m.attention : m.output).put(i, m.adapter(i, kind, down, downBias, up, upBias, scaling));
                }
            }
            List<String> extra = new ArrayList<>(new TreeSet<>(f.names()));
            extra.removeAll(seen);
            if (!extra.isEmpty()) {
                System.getLogger(BottleneckModel.class.getName()).log(System.Logger.Level.WARNING,
                        file + ": ignored " + extra.size() + " tensor(s) with no place in this model: " + extra);
            }
        }
        return m;
    }

    private static float[] read(SafetensorsFile f, Path file, String key, TreeSet<String> seen, int... shape) {
        if (!f.has(key)) {
            throw new IllegalArgumentException(file + ": tensor " + key + " is missing; adapter_config.json implies it for this model "
                    + "(check layers_to_transform, mh_adapter/output_adapter and the model's layer count)");
        }
        Tensor t = f.tensor(key);
        if (!Arrays.equals(t.shape(), shape)) {
            throw new IllegalArgumentException(file + ": tensor " + key + " has shape " + Arrays.toString(t.shape()) + " but this model expects "
                    + Arrays.toString(shape) + " (bottleneck size from adapter_config.json, hidden size from the model)");
        }
        seen.add(key);
        return t.toFloatArray();
    }

    @Override
    public void close() {
        all().forEach(BottleneckAdapter::close);
        attention.clear();
        output.clear();
    }
}
