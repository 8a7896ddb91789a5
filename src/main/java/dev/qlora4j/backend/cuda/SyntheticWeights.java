package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.model.LinearFactory;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.model.WeightSource;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Random-weight Llama models of named shapes, for benchmarks (no 7B checkpoint needs to exist): a
 * {@link WeightSource} whose tensors are made on request, BF16 with std 0.02 (norm weights are ones),
 * each a pure function of (seed, tensor name).
 *
 * <p>Two modes. {@link #onDevice}: the large tensors (embedding, linear weights, LM head) are generated
 * straight into GPU memory by native/random.cu and returned as device tensors; {@link CudaBackend#upload}
 * passes a tensor already on its GPU through without a copy, so {@code TransformerLM.load(config, weights,
 * backend, LinearFactory.DENSE)} builds the model with no host round trip (a 70B shape would otherwise
 * move 140 GB through the host). The small norm weights are host tensors as the WeightSource contract
 * says. {@link #onHost}: every tensor on the host, the same values computed in Java
 * ({@link RandomKernels#normalAt}), for the CPU backend and tests of small shapes.
 */
public final class SyntheticWeights implements WeightSource {
    /** Standard deviation of every random matrix (the usual initializer_range of Llama configs). */
    public static final float STD = 0.02f;

    /** A named model shape. */
    public record Shape(String name, int hidden, int intermediate, int layers, int heads, int kvHeads, int vocab,
                        double ropeTheta, int maxPositions) {}

    /** The shapes by name: llama-1b (TinyLlama), llama-7b, llama3-8b, llama-13b, llama-70b, and llama-tiny for tests. */
    public static final Map<String, Shape> SHAPES = Map.of(
            "llama-tiny", new Shape("llama-tiny", 64, 160, 2, 4, 2, 512, 10000, 2048),
            "llama-1b", new Shape("llama-1b", 2048, 5632, 22, 32, 4, 32000, 10000, 2048),
            "llama-7b", new Shape("llama-7b", 4096, 11008, 32, 32, 32, 32000, 10000, 4096),
            "llama3-8b", new Shape("llama3-8b", 4096, 14336, 32, 32, 8, 128256, 500000, 8192),
            "llama-13b", new Shape("llama-13b", 5120, 13824, 40, 40, 40, 32000, 10000, 4096),
            "llama-70b", new Shape("llama-70b", 8192, 28672, 80, 64, 8, 128256, 500000, 8192));

    private final ModelConfig config;
    private final long seed;
    private final CudaContext ctx; // null: host mode

    private SyntheticWeights(ModelConfig config, long seed, CudaContext ctx) {
        this.config = config;
        this.seed = seed;
        this.ctx = ctx;
    }

    /** Large tensors generated in the GPU memory of backend (see the class comment). */
    public static SyntheticWeights onDevice(ModelConfig config, CudaBackend backend, long seed) {
        return new SyntheticWeights(config, seed, backend.context());
    }

    /** Every tensor on the host (Java-generated; fine for small shapes). */
    public static SyntheticWeights onHost(ModelConfig config, long seed) {
        return new SyntheticWeights(config, seed, null);
    }

    /**
     * The shape of a name, or an error listing the known names. "NAME@L" is NAME with L decoder layers (every
     * layer's size unchanged): benchmarks of per-layer limits, e.g. the longest trainable context, where the GPU
     * memory a step needs does not grow with the layer count (checkpoints offloaded) but the time does.
     */
    public static Shape shape(String name) {
        String base = name.toLowerCase(Locale.ROOT);
        int at = base.indexOf('@');
        Integer layers = null;
        if (at >= 0) {
            try {
                layers = Integer.parseInt(base.substring(at + 1));
            } catch (NumberFormatException e) {
                layers = -1;
            }
            if (layers < 1) {
                throw new IllegalArgumentException("synthetic shape '" + name + "': after '@' give the number of layers (>= 1), "
                        + "e.g. llama3-8b@2");
            }
            base = base.substring(0, at);
        }
        Shape s = SHAPES.get(base);
        if (s == null) {
            throw new IllegalArgumentException("unknown synthetic model shape '" + name + "'; known: "
                    + SHAPES.keySet().stream().sorted().toList() + " (optionally NAME@LAYERS)");
        }
        return layers == null ? s : new Shape(s.name() + "@" + layers, s.hidden(), s.intermediate(), layers, s.heads(),
                s.kvHeads(), s.vocab(), s.ropeTheta(), s.maxPositions());
    }

    /** The config.json of a named shape (LlamaForCausalLM, untied LM head, bfloat16, plain RoPE). */
    public static ModelConfig config(String shapeName) {
        Shape s = shape(shapeName);
        boolean llama3 = s.vocab() == 128256;
        String json = String.format(Locale.ROOT, """
                {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": %d,
                 "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
                 "num_attention_heads": %d, "num_key_value_heads": %d, "max_position_embeddings": %d,
                 "rms_norm_eps": 1e-05, "rope_theta": %.1f, "tie_word_embeddings": false,
                 "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": %d, "eos_token_id": %d}
                """, s.vocab(), s.hidden(), s.intermediate(), s.layers(), s.heads(), s.kvHeads(), s.maxPositions(),
                s.ropeTheta(), llama3 ? 128000 : 1, llama3 ? 128001 : 2);
        return ModelConfig.parse(json);
    }

    /** A model of a named shape with random weights made on the backend's GPU. */
    public static TransformerLM model(String shapeName, CudaBackend backend, long seed) {
        ModelConfig c = config(shapeName);
        return TransformerLM.load(c, onDevice(c, backend, seed), backend, LinearFactory.DENSE);
    }

    /** As {@link #model(String, CudaBackend, long)} with the linear layers built by a factory (e.g. NF4). */
    public static TransformerLM model(String shapeName, CudaBackend backend, long seed, LinearFactory linears) {
        ModelConfig c = config(shapeName);
        return TransformerLM.load(c, onDevice(c, backend, seed), backend, linears);
    }

    /** A model of a named shape with host-generated weights uploaded to backend (any backend; small shapes). */
    public static TransformerLM hostModel(String shapeName, Backend backend, long seed) {
        ModelConfig c = config(shapeName);
        return TransformerLM.load(c, onHost(c, seed), backend, LinearFactory.DENSE);
    }

    public ModelConfig config() { return config; }

    /** Tensor name -> shape, every weight the model has. */
    Map<String, int[]> shapes() {
        ModelConfig c = config;
        int h = c.hiddenSize(), inter = c.intermediateSize(), q = c.numAttentionHeads() * c.headDim(),
                kv = c.numKeyValueHeads() * c.headDim();
        Map<String, int[]> m = new HashMap<>();
        m.put("model.embed_tokens.weight", new int[] {c.vocabSize(), h});
        m.put("model.norm.weight", new int[] {h});
        if (!c.tieWordEmbeddings()) m.put("lm_head.weight", new int[] {c.vocabSize(), h});
        for (int i = 0; i < c.numHiddenLayers(); i++) {
            String p = "model.layers." + i + ".";
            m.put(p + "input_layernorm.weight", new int[] {h});
            m.put(p + "post_attention_layernorm.weight", new int[] {h});
            m.put(p + "self_attn.q_proj.weight", new int[] {q, h});
            m.put(p + "self_attn.k_proj.weight", new int[] {kv, h});
            m.put(p + "self_attn.v_proj.weight", new int[] {kv, h});
            m.put(p + "self_attn.o_proj.weight", new int[] {h, q});
            m.put(p + "mlp.gate_proj.weight", new int[] {inter, h});
            m.put(p + "mlp.up_proj.weight", new int[] {inter, h});
            m.put(p + "mlp.down_proj.weight", new int[] {h, inter});
        }
        return m;
    }

    @Override
    public boolean has(String name) { return shapes().containsKey(name); }

    /** Norm weights: host BF16 ones. Matrices: BF16 N(0, 0.02^2), on the GPU in device mode. */
    @Override
    public Tensor get(String name) {
        int[] shape = shapes().get(name);
        if (shape == null) {
            throw new IllegalArgumentException(describe() + ": no tensor '" + name + "' (a Llama model of this shape has "
                    + "model.embed_tokens.weight, model.layers.N.*, model.norm.weight, lm_head.weight)");
        }
        if (shape.length == 1) {
            Tensor ones = Tensor.zeros(DType.BF16, shape);
            for (int i = 0; i < shape[0]; i++) ones.setFloat(i, 1f);
            return ones;
        }
        long s = tensorSeed(seed, name);
        if (ctx != null) return RandomKernels.normal(ctx, DType.BF16, s, 0f, STD, shape);
        Tensor t = Tensor.zeros(DType.BF16, shape);
        long n = t.numel();
        for (long i = 0; i < n; i++) {
            t.segment().setAtIndex(Tensor.I16_LE, i, Half.floatToBf16(0f + STD * RandomKernels.normalAt(s, i)));
        }
        return t;
    }

    /** The generator seed of one tensor: a hash of the model seed and the name (FNV-1a, then SplitMix64). */
    static long tensorSeed(long seed, String name) {
        long h = 0xcbf29ce484222325L;
        for (byte b : name.getBytes(StandardCharsets.UTF_8)) {
            h ^= b & 0xFF;
            h *= 0x100000001b3L;
        }
        return RandomKernels.splitmix64(h ^ RandomKernels.splitmix64(seed));
    }

    @Override
    public String describe() {
        return String.format(Locale.ROOT, "synthetic %s model (random bf16, std %.2f, seed %d, %s)",
                config.architecture(), STD, seed, ctx == null ? "host" : "generated on " + ctx.device());
    }

    /** The shape names, sorted. */
    public static List<String> shapeNames() { return SHAPES.keySet().stream().sorted().toList(); }
}
