package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.List;

/**
 * The Llama-family decoder-only language model (LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM): embedding, N decoder layers, final RMSNorm, LM head (possibly tied to the
 * embedding). Weights live on the backend's device; {@link #forward} runs one step over a batch.
 */
public final class TransformerLM implements AutoCloseable {
    private final ModelConfig config;
    private final Backend backend;
    private final Tensor embed;      // [vocab, hidden]
    private final List<DecoderLayer> layers;
    private final Tensor finalNorm;  // [hidden]
    private Linear lmHead;           // [vocab, hidden]; shares embed when tied
    private final boolean tied;
    private Tensor invFreq;          // [headDim/2] F32 on the device, for invFreqSeqLen
    private int invFreqSeqLen = -1;

    private TransformerLM(ModelConfig config, Backend backend, Tensor embed, List<DecoderLayer> layers,
                          Tensor finalNorm, Linear lmHead, boolean tied) {
        this.config = config;
        this.backend = backend;
        this.embed = embed;
        this.layers = layers;
        this.finalNorm = finalNorm;
        this.lmHead = lmHead;
        this.tied = tied;
    }

    /** Builds the model from HF-named weights ("model.layers.0.self_attn.q_proj.weight" ...). */
    public static TransformerLM load(ModelConfig c, WeightSource w, Backend b, LinearFactory linears) {
        Tensor embed = b.upload(w.get("model.embed_tokens.weight"));
        checkShape(embed, w, "model.embed_tokens.weight", c.vocabSize(), c.hiddenSize());
        List<DecoderLayer> layers = new ArrayList<>();
        for (int i = 0; i < c.numHiddenLayers(); i++) {
            String p = "model.layers." + i + ".";
            Linear q = linears.create(p + "self_attn.q_proj", w, b, c.qkvBias());
            Linear k = linears.create(p + "self_attn.k_proj", w, b, c.qkvBias());
            Linear v = linears.create(p + "self_attn.v_proj", w, b, c.qkvBias());
            Linear o = linears.create(p + "self_attn.o_proj", w, b, c.oBias());
            Linear gate = linears.create(p + "mlp.gate_proj", w, b, c.mlpBias());
            Linear up = linears.create(p + "mlp.up_proj", w, b, c.mlpBias());
            Linear down = linears.create(p + "mlp.down_proj", w, b, c.mlpBias());
            int qOut = c.numAttentionHeads() * c.headDim(), kvOut = c.numKeyValueHeads() * c.headDim();
            checkLinear(q, w, p + "self_attn.q_proj", qOut, c.hiddenSize());
            checkLinear(k, w, p + "self_attn.k_proj", kvOut, c.hiddenSize());
            checkLinear(v, w, p + "self_attn.v_proj", kvOut, c.hiddenSize());
            checkLinear(o, w, p + "self_attn.o_proj", c.hiddenSize(), qOut);
            checkLinear(gate, w, p + "mlp.gate_proj", c.intermediateSize(), c.hiddenSize());
            checkLinear(up, w, p + "mlp.up_proj", c.intermediateSize(), c.hiddenSize());
            checkLinear(down, w, p + "mlp.down_proj", c.hiddenSize(), c.intermediateSize());
            Tensor n1 = b.upload(w.get(p + "input_layernorm.weight"));
            Tensor n2 = b.upload(w.get(p + "post_attention_layernorm.weight"));
            checkShape(n1, w, p + "input_layernorm.weight", c.hiddenSize());
            checkShape(n2, w, p + "post_attention_layernorm.weight", c.hiddenSize());
            layers.add(new DecoderLayer(i, n1, n2, q, k, v, o, gate, up, down));
        }
        Tensor norm = b.upload(w.get("model.norm.weight"));
        checkShape(norm, w, "model.norm.weight", c.hiddenSize());
        // transformers ties when tie_word_embeddings is set, and also falls back to the embedding
        // when a checkpoint simply omits lm_head.weight.
        boolean tied = c.tieWordEmbeddings() || !w.has("lm_head.weight");
        Linear head = tied ? new DenseLinear(embed, null) : linears.create("lm_head", w, b, false);
        checkLinear(head, w, "lm_head", c.vocabSize(), c.hiddenSize());
        return new TransformerLM(c, b, embed, layers, norm, head, tied);
    }

    private static void checkShape(Tensor t, WeightSource w, String name, int... expected) {
        if (!java.util.Arrays.equals(t.shape(), expected)) {
            throw new IllegalArgumentException(w.describe() + ": tensor " + name + " has shape "
                    + java.util.Arrays.toString(t.shape()) + " but config.json implies "
                    + java.util.Arrays.toString(expected) + ": the weights do not belong to this config");
        }
    }

    private static void checkLinear(Linear l, WeightSource w, String name, int out, int in) {
        if (l.outFeatures() != out || l.inFeatures() != in) {
            throw new IllegalArgumentException(w.describe() + ": " + name + " is [" + l.outFeatures() + ", "
                    + l.inFeatures() + "] but config.json implies [" + out + ", " + in
                    + "]: the weights do not belong to this config");
        }
    }

    public ModelConfig config() { return config; }

    public Backend backend() { return backend; }

    public int numLayers() { return layers.size(); }

    /** A KV cache sized for this model. */
    public KvCache newCache(int batch, int capacity) {
        return backend.newKvCache(layers.size(), batch, config.numKeyValueHeads(), capacity, config.headDim());
    }

    /**
     * One step: ids and positions I32 [B*T] on the device (row-major over batch then time),
     * cache slots [start, start+T), padStart I32 [B]. Returns the final hidden states [B*T, hidden].
     */
    public Tensor forward(Tensor ids, Tensor positions, KvCache cache, int start, Tensor padStart) {
        Tensor x = backend.embedding(ids, embed);
        Tensor inv = invFreq(start + ids.dim(0) / cache.batch());
        float ropeScale = (float) RopeScaling.attentionScaling(config);
        for (DecoderLayer layer : layers) {
            Tensor next = layer.forward(backend, config, x, positions, inv, ropeScale, cache, start, padStart);
            x.close();
            x = next;
        }
        Tensor out = backend.rmsNorm(x, finalNorm, (float) config.rmsNormEps());
        x.close();
        return out;
    }

    /** hidden [n, hidden] -> logits [n, vocab]. */
    public Tensor logits(Tensor hidden) {
        return lmHead.forward(backend, hidden);
    }

    /**
     * RoPE inverse frequencies for a sequence length. Only "dynamic" NTK scaling depends on the
     * length (it grows the base once the sequence exceeds max_position_embeddings), so the
     * table is recomputed only when that changes the result.
     */
    private Tensor invFreq(int seqLen) {
        int key = RopeScaling.dependsOnSeqLen(config) ? Math.max(seqLen, config.maxPositionEmbeddings()) : 0;
        if (invFreq == null || key != invFreqSeqLen) {
            if (invFreq != null) invFreq.close();
            float[] f = RopeScaling.invFreq(config, seqLen);
            invFreq = backend.upload(Tensor.of(f, f.length));
            invFreqSeqLen = key;
        }
        return invFreq;
    }

    /**
     * HF module paths of every linear layer, in model order: "model.layers.0.self_attn.q_proj", ...,
     * then "lm_head" (what peft's target_modules match against).
     */
    public java.util.List<String> linearPaths() {
        java.util.List<String> out = new ArrayList<>();
        for (int i = 0; i < layers.size(); i++) {
            for (String p : DecoderLayer.PROJECTIONS) out.add("model.layers." + i + "." + p);
        }
        out.add("lm_head");
        return out;
    }

    /** The linear layer at a module path (see {@link #linearPaths()}). */
    public Linear linear(String path) {
        if (path.equals("lm_head")) return lmHead;
        int[] at = layerAndProjection(path);
        return layers.get(at[0]).projection(path.substring(path.indexOf('.', "model.layers.".length()) + 1));
    }

    /** Replaces the linear layer at a module path (adapters wrap the layer they replace). */
    public void setLinear(String path, Linear l) {
        Linear old = linear(path);
        if (old.inFeatures() != l.inFeatures() || old.outFeatures() != l.outFeatures()) {
            throw new IllegalArgumentException("replacement for " + path + " is [" + l.outFeatures() + ", "
                    + l.inFeatures() + "] but the layer is [" + old.outFeatures() + ", " + old.inFeatures() + "]");
        }
        if (path.equals("lm_head")) {
            lmHead = l;
            return;
        }
        int[] at = layerAndProjection(path);
        layers.get(at[0]).setProjection(path.substring(path.indexOf('.', "model.layers.".length()) + 1), l);
    }

    private int[] layerAndProjection(String path) {
        String prefix = "model.layers.";
        if (!path.startsWith(prefix)) throw new IllegalArgumentException("not a linear module path: " + path);
        int dot = path.indexOf('.', prefix.length());
        int layer = Integer.parseInt(path.substring(prefix.length(), dot));
        if (layer < 0 || layer >= layers.size()) {
            throw new IllegalArgumentException(path + ": the model has layers 0.." + (layers.size() - 1));
        }
        return new int[] {layer};
    }

    /** The embedding table [vocab, hidden] (for embedding adapters and modules_to_save). */
    public Tensor embedTokens() { return embed; }

    public List<DecoderLayer> layers() { return java.util.Collections.unmodifiableList(layers); }

    public Tensor finalNorm() { return finalNorm; }

    /** Bytes of all weights on the device. */
    public long weightBytes() {
        long n = embed.byteSize() + finalNorm.byteSize() + (tied ? 0 : lmHead.weightBytes());
        for (DecoderLayer l : layers) n += l.weightBytes();
        return n;
    }

    public DType weightDType() { return embed.dtype(); }

    @Override
    public void close() {
        for (DecoderLayer l : layers) l.close();
        embed.close();
        finalNorm.close();
        if (!tied) lmHead.close();
        if (invFreq != null) invFreq.close();
    }
}
