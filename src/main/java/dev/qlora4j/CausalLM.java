package dev.qlora4j;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.Backends;
import dev.qlora4j.infer.GenerationConfig;
import dev.qlora4j.infer.GenerationResult;
import dev.qlora4j.infer.Generator;
import dev.qlora4j.infer.LossEvaluator;
import dev.qlora4j.infer.SamplingParams;
import dev.qlora4j.infer.TokenListener;
import dev.qlora4j.io.CheckpointReader;
import dev.qlora4j.io.tokenizer.Tokenizer;
import dev.qlora4j.model.CheckpointWeights;
import dev.qlora4j.model.LinearFactory;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.QuantizedLinearFactory;
import dev.qlora4j.quant.QuantizationConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * A causal language model loaded from a Hugging Face folder, the Java counterpart of
 * {@code AutoModelForCausalLM.from_pretrained(dir)} plus its tokenizer:
 *
 * <pre>{@code
 * try (CausalLM lm = CausalLM.fromPretrained(Path.of("models/tiny"), LoadOptions.cpu())) {
 *     GenerationResult r = lm.generate(List.of("Once upon a time"), SamplingParams.greedy(32), TokenListener.NONE);
 *     System.out.println(r.texts()[0]);
 * }
 * }</pre>
 */
public final class CausalLM implements AutoCloseable {
    private final Path dir;
    private final ModelConfig config;
    private final GenerationConfig generationConfig;
    private final Tokenizer tokenizer; // null when the folder has no tokenizer.json
    private final Backend backend;
    private final CheckpointReader checkpoint;
    private final TransformerLM model;
    private dev.qlora4j.placement.PlacementPlan placementPlan; // null without a device map

    private CausalLM(Path dir, ModelConfig config, GenerationConfig gen, Tokenizer tokenizer, Backend backend,
                     CheckpointReader checkpoint, TransformerLM model) {
        this.dir = dir;
        this.config = config;
        this.generationConfig = gen;
        this.tokenizer = tokenizer;
        this.backend = backend;
        this.checkpoint = checkpoint;
        this.model = model;
    }

    public static CausalLM fromPretrained(Path dir) {
        return fromPretrained(dir, LoadOptions.defaults());
    }

    public static CausalLM fromPretrained(Path dir, LoadOptions options) {
        return fromPretrained(dir, options, dev.qlora4j.placement.PlacementOptions.NONE);
    }

    /**
     * from_pretrained with device_map / max_memory / offload_folder: the placement is planned for the backend
     * ({@link #placementPlan()}); decoder layers placed on "cpu" or "disk" are streamed to the GPU before each use.
     */
    public static CausalLM fromPretrained(Path dir, LoadOptions options, dev.qlora4j.placement.PlacementOptions placement) {
        if (!Files.isDirectory(dir)) {
            throw new IllegalArgumentException("model folder " + dir + " does not exist: pass a folder with config.json and *.safetensors");
        }
        ModelConfig config;
        GenerationConfig gen;
        Tokenizer tok;
        try {
            config = ModelConfig.load(dir);
            gen = GenerationConfig.load(dir, config);
            tok = Files.exists(dir.resolve("tokenizer.json")) ? Tokenizer.fromPretrained(dir) : null;
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot read model folder " + dir + ": " + e.getMessage(), e);
        }
        Backend backend = Backends.create(options.device());
        CheckpointReader reader = null;
        try {
            reader = CheckpointReader.open(dir);
            dev.qlora4j.placement.PlacementPlan plan = null;
            dev.qlora4j.model.LayerResidency residency = dev.qlora4j.model.LayerResidency.NONE;
            dev.qlora4j.model.ModelDevices devices = dev.qlora4j.model.ModelDevices.single(backend, config.numHiddenLayers());
            if (placement.active()) {
                QuantizationConfig q = config.quantizationConfig() != null
                        ? QuantizationConfig.fromJson(config.quantizationConfig()) : options.quantization();
                plan = dev.qlora4j.placement.Offloading.plan(placement, config,
                        config.torchDtype() != null ? config.torchDtype() : dev.qlora4j.tensor.DType.F32, q, backend);
                devices = dev.qlora4j.placement.Offloading.devices(plan, backend); // several GPUs: a backend per GPU
                try {
                    residency = dev.qlora4j.placement.Offloading.residency(plan, devices, placement.offloadFolder());
                } catch (RuntimeException e) {
                    devices.close();
                    throw e;
                }
            }
            TransformerLM model = TransformerLM.load(config, new CheckpointWeights(reader, dir.toString()), devices,
                    linearFactory(config, options), residency);
            // On a GPU the weights were copied; the mapped files can go. On the CPU they are the weights.
            if (!backend.device().isCpu()) {
                reader.close();
                reader = null;
            }
            CausalLM lm = new CausalLM(dir, config, gen, tok, backend, reader, model);
            lm.placementPlan = plan;
            return lm;
        } catch (RuntimeException e) {
            if (reader != null) reader.close();
            if (tok != null) tok.close();
            backend.close();
            throw e;
        }
    }

    /**
     * Dense layers, or quantized ones: a checkpoint saved by bitsandbytes carries its own
     * quantization_config (its layers load as stored); otherwise the options may ask for
     * quantize-on-load.
     */
    static LinearFactory linearFactory(ModelConfig config, LoadOptions options) {
        if (config.quantizationConfig() != null) {
            return new QuantizedLinearFactory(QuantizationConfig.fromJson(config.quantizationConfig()));
        }
        if (options.quantization() != null) return new QuantizedLinearFactory(options.quantization());
        return LinearFactory.DENSE;
    }

    public ModelConfig config() { return config; }

    /** The device map the model was loaded with, or null when none was asked for. */
    public dev.qlora4j.placement.PlacementPlan placementPlan() { return placementPlan; }

    public GenerationConfig generationConfig() { return generationConfig; }

    public TransformerLM model() { return model; }

    /**
     * The backend the model was loaded with (--device). On a model split over several GPUs, inputs and outputs go
     * through {@code model().backend()} (the head's GPU) and {@code model().devices()} lists every backend.
     */
    public Backend backend() { return backend; }

    public Path dir() { return dir; }

    public Tokenizer tokenizer() {
        if (tokenizer == null) {
            throw new IllegalStateException(dir + " has no tokenizer.json: pass token ids, or copy the tokenizer files into the folder");
        }
        return tokenizer;
    }

    /** EOS ids from generation_config.json, else config.json, else the tokenizer. */
    public int[] eosTokenIds() {
        int[] e = generationConfig.eosTokenIds();
        if (e != null && e.length > 0) return e;
        return tokenizer != null ? tokenizer.eosTokenIds() : new int[0];
    }

    /** The pad id; when the model has none, EOS stands in (as transformers does in generate()). */
    public int padTokenId() {
        if (generationConfig.padTokenId() != null) return generationConfig.padTokenId();
        if (tokenizer != null) return tokenizer.padTokenId();
        int[] eos = eosTokenIds();
        return eos.length > 0 ? eos[0] : 0;
    }

    /** Generates from text prompts (encoded with special tokens, as tokenizer(text) does). */
    public GenerationResult generate(List<String> prompts, SamplingParams params, TokenListener listener) {
        int[][] ids = new int[prompts.size()][];
        for (int i = 0; i < ids.length; i++) ids[i] = tokenizer().encode(prompts.get(i), true);
        return generateIds(ids, params, listener);
    }

    /** Generates from token-id prompts (a batch is left-padded as transformers does). */
    public GenerationResult generateIds(int[][] prompts, SamplingParams params, TokenListener listener) {
        java.util.function.Function<int[], String> decode = tokenizer == null
                ? ids -> "" : ids -> tokenizer.decode(ids, true);
        return new Generator(model, eosTokenIds(), padTokenId(), decode).generate(prompts, params, listener);
    }

    /** Causal-LM loss of one sequence (labels = inputs, shifted). */
    public LossEvaluator.LossSum loss(int[] ids) {
        return new LossEvaluator(model).loss(ids);
    }

    /** Full-sequence logits [T][vocab] of one unpadded sequence (for tests and scoring). */
    public float[][] logits(int[] ids) {
        int n = ids.length;
        int[] pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = i;
        try (var cache = model.newCache(1, n);
             Tensor idT = model.backend().upload(Tensor.ofInts(ids, n));
             Tensor posT = model.backend().upload(Tensor.ofInts(pos, n));
             Tensor pads = model.backend().upload(Tensor.ofInts(new int[] {0}, 1));
             Tensor hidden = model.forward(idT, posT, cache, 0, pads);
             Tensor logits = model.logits(hidden)) {
            float[] flat = model.backend().toHost(logits).toFloatArray();
            int v = logits.dim(1);
            float[][] out = new float[n][];
            for (int t = 0; t < n; t++) out[t] = java.util.Arrays.copyOfRange(flat, t * v, (t + 1) * v);
            return out;
        }
    }

    @Override
    public void close() {
        model.close();
        if (checkpoint != null) checkpoint.close();
        if (tokenizer != null) tokenizer.close();
        backend.close();
    }
}
