package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.peft.LayerHooks;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.WeakHashMap;

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
    private boolean tied;
    private Tensor invFreq;          // [headDim/2] F32 on the device, for invFreqSeqLen
    private int invFreqSeqLen = -1;
    private LayerHooks hooks = LayerHooks.NONE;
    private CachePrefix cachePrefix; // preloaded into every new cache while set (prefix/prompt tuning)
    private TrainingPrefix trainingPrefix; // prefix tuning's learned keys/values in training steps, or null
    /** Caches made by newCache with a prefix in their first slots, and that prefix's length (identity keys). */
    private final Map<KvCache, Integer> prefixedCaches = Collections.synchronizedMap(new WeakHashMap<>());
    /** Streams offloaded layers' weights in around each use (NONE: every layer stays on the device). */
    private LayerResidency residency = LayerResidency.NONE;
    /** Where checkpointed layer inputs wait for the backward (ON_DEVICE, or pinned host memory). */
    private ActivationStore activationStore = ActivationStore.ON_DEVICE;

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
        return load(c, w, b, linears, LayerResidency.NONE);
    }

    /**
     * {@link #load(ModelConfig, WeightSource, Backend, LinearFactory)} with a placement: each layer, once built,
     * is handed to residency.placeLayer (which may move its weights to host memory or disk), and the model
     * calls residency around every use of a layer. The model closes residency.
     */
    public static TransformerLM load(ModelConfig c, WeightSource w, Backend b, LinearFactory linears, LayerResidency residency) {
        try {
            TransformerLM m = loadLayers(c, w, b, linears, residency);
            m.residency = residency;
            return m;
        } catch (RuntimeException e) {
            residency.close();
            throw e;
        }
    }

    private static TransformerLM loadLayers(ModelConfig c, WeightSource w, Backend b, LinearFactory linears, LayerResidency residency) {
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
            DecoderLayer layer = new DecoderLayer(i, n1, n2, q, k, v, o, gate, up, down);
            layers.add(layer);
            residency.placeLayer(i, layer);
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

    /**
     * A KV cache sized for this model. While a {@link CachePrefix} is set, the cache gets
     * {@code capacity} slots plus the prefix's, the prefix is written into its first slots, and
     * {@link #forward} on it places the tokens after the prefix (callers keep counting slots and
     * positions from 0).
     */
    public KvCache newCache(int batch, int capacity) {
        CachePrefix p = cachePrefix;
        int extra = p == null ? 0 : p.length();
        KvCache cache = backend.newKvCache(layers.size(), batch, config.numKeyValueHeads(), capacity + extra, config.headDim());
        if (p != null) {
            try {
                preload(cache, p);
            } catch (RuntimeException e) {
                cache.close();
                throw e;
            }
            prefixedCaches.put(cache, extra);
        }
        return cache;
    }

    /**
     * One step: ids and positions I32 [B*T] on the device (row-major over batch then time),
     * cache slots [start, start+T), padStart I32 [B]. Returns the final hidden states [B*T, hidden].
     * On a cache made with a {@link CachePrefix}, slot s of the caller is slot s + prefix length.
     */
    public Tensor forward(Tensor ids, Tensor positions, KvCache cache, int start, Tensor padStart) {
        Tensor x = embed(ids);
        return runLayers(x, true, positions, cache, start, padStart);
    }

    /**
     * {@link #forward} from precomputed input embeddings x [B*T, hidden] (activation dtype, on the
     * device) instead of token ids: prompt tuning puts learned vectors before the token embeddings.
     * x stays the caller's. Returns the final hidden states [B*T, hidden].
     */
    public Tensor forwardEmbeddings(Tensor x, Tensor positions, KvCache cache, int start, Tensor padStart) {
        if (x.rank() != 2 || x.dim(1) != config.hiddenSize()) {
            throw new IllegalArgumentException("forwardEmbeddings: x must be [B*T, hidden_size " + config.hiddenSize() + "], got "
                    + java.util.Arrays.toString(x.shape()));
        }
        return runLayers(x, false, positions, cache, start, padStart);
    }

    /** The decoder stack and final norm; closes x when owned (as soon as the first layer is done with it). */
    private Tensor runLayers(Tensor x, boolean ownsX, Tensor positions, KvCache cache, int start, Tensor padStart) {
        int offset = cacheOffset(cache);
        if (offset > 0 && start == 0) requireUnpadded(padStart);
        int slot = start + offset;
        Tensor inv = invFreq(slot + x.dim(0) / cache.batch());
        float ropeScale = (float) RopeScaling.attentionScaling(config);
        boolean owned = ownsX;
        Tensor h = null; // rmsNorm of x by the next layer's input norm, from the previous layer's fused add
        for (int i = 0; i < layers.size(); i++) {
            // A streamed layer's norm weights live in its upload slot only while it runs: fuse its input norm into
            // the previous layer's last add only when no layer streams (the final norm always stays resident).
            Tensor nextNorm = i + 1 == layers.size() ? finalNorm
                    : residency.streams() ? null : layers.get(i + 1).inputNorm;
            residency.enter(layers.get(i).index, true);
            DecoderLayer.Output next = layers.get(i).forward(backend, config, x, h, nextNorm, positions, inv, ropeScale,
                    cache, slot, padStart);
            residency.exit(layers.get(i).index);
            if (owned) x.close();
            x = next.out();
            h = next.normed();
            owned = true;
        }
        if (h == null) h = backend.rmsNorm(x, finalNorm, (float) config.rmsNormEps()); // no layers
        if (owned) x.close();
        return h;
    }

    // ---- hooks and cache prefixes (bottleneck adapters, prefix and prompt tuning) ----

    /** The hooks every decoder layer calls after its sublayers ({@link LayerHooks#NONE} by default). */
    public LayerHooks hooks() { return hooks; }

    /** Sets the layer hooks (e.g. a BottleneckModel); null restores {@link LayerHooks#NONE}. */
    public void setHooks(LayerHooks h) {
        hooks = h == null ? LayerHooks.NONE : h;
        for (DecoderLayer l : layers) l.hooks = hooks;
    }

    /**
     * Keys and values that every sequence starts with (prefix tuning; prompt tuning once its
     * virtual tokens are run): {@link #newCache} writes them into slots [0, length()) of every
     * batch row and layer. Real tokens keep positions 0, 1, ...: a prefix that belongs at other
     * positions passes its keys rotated accordingly (see {@link #rotateKeysInPlace}), since rope
     * only sees position differences between a query and a rotated key.
     */
    public interface CachePrefix {
        /** Number of cache slots taken, P. */
        int length();

        /** Keys of one layer [P, kvHeads*headDim] on the device, exactly as they go into the cache. */
        Tensor keys(int layer);

        /** Values of one layer [P, kvHeads*headDim] on the device. */
        Tensor values(int layer);
    }

    /**
     * Sets the prefix new caches start with (null: none). Caches already made keep what they were
     * made with. Limits: a left-padded batch cannot see a prefix (attention sees one contiguous
     * slot range per row, and the pads would sit between prefix and prompt), so forward rejects
     * it; "dynamic" rope scaling (frequencies that change with the length) is rejected because
     * prefix keys are rotated once; training steps reject a set prefix.
     */
    public void setCachePrefix(CachePrefix p) {
        if (p != null) {
            if (RopeScaling.dependsOnSeqLen(config)) {
                throw new IllegalArgumentException("prefix/prompt tuning with \"dynamic\" rope scaling is not supported (its frequencies "
                        + "change with the sequence length, and the prefix keys are rotated once); remove rope_scaling or use another type");
            }
            if (p.length() <= 0) throw new IllegalArgumentException("a cache prefix needs at least one slot, got " + p.length());
            for (int i = 0; i < layers.size(); i++) {
                checkPrefixRows(p.keys(i), p.length(), "keys", i);
                checkPrefixRows(p.values(i), p.length(), "values", i);
            }
        }
        cachePrefix = p;
    }

    private void checkPrefixRows(Tensor t, int rows, String what, int layer) {
        int width = config.numKeyValueHeads() * config.headDim();
        if (t == null || t.rank() != 2 || t.dim(0) != rows || t.dim(1) != width) {
            throw new IllegalArgumentException("cache prefix " + what + " of layer " + layer + " must be [" + rows + ", kv_heads*head_dim "
                    + width + "], got " + (t == null ? "null" : java.util.Arrays.toString(t.shape())));
        }
    }

    public CachePrefix cachePrefix() { return cachePrefix; }

    /**
     * Prefix tuning during training: P learned keys/values in front of every sequence of
     * {@link #trainStep} and {@link #evalStep}, visible to every query (each packed example sees
     * it), whose gradients the layers accumulate. Keys are given as attention sees them (rotated
     * like a {@link CachePrefix}'s). The owner refreshes keys/values after each optimizer step.
     */
    public interface TrainingPrefix {
        /** Number of prefix slots, P. */
        int length();

        /** Keys of one layer [P, kvHeads*headDim], activation dtype, on the device; valid for a whole step. */
        Tensor keys(int layer);

        /** Values of one layer [P, kvHeads*headDim]. */
        Tensor values(int layer);

        /** F32 [P, kvHeads*headDim] accumulator of d(loss)/d(keys(layer)) that the layer's backward adds into. */
        Tensor keyGradients(int layer);

        /** F32 [P, kvHeads*headDim] accumulator of d(loss)/d(values(layer)). */
        Tensor valueGradients(int layer);
    }

    /** Sets the training prefix of every layer (null: none); see {@link TrainingPrefix}. */
    public void setTrainingPrefix(TrainingPrefix p) {
        if (p != null && RopeScaling.dependsOnSeqLen(config)) {
            throw new IllegalArgumentException("prefix tuning with \"dynamic\" rope scaling is not supported (the prefix keys are "
                    + "rotated once, its frequencies change with the length); remove rope_scaling or use another type");
        }
        trainingPrefix = p;
        for (DecoderLayer l : layers) l.prefix = p;
    }

    public TrainingPrefix trainingPrefix() { return trainingPrefix; }

    /**
     * Slots a prefix takes at the front of this cache (0 for a cache made without one). Code that
     * addresses cache slots itself (a recorded CUDA decode step reads the start slot on the device)
     * must add it.
     */
    public int cacheOffset(KvCache cache) {
        Integer n = prefixedCaches.get(cache);
        return n == null ? 0 : n;
    }

    private void preload(KvCache cache, CachePrefix p) {
        int batch = cache.batch(), len = p.length();
        int[] rows = new int[batch * len];
        for (int r = 0; r < batch; r++) for (int i = 0; i < len; i++) rows[r * len + i] = i;
        try (Tensor rowT = backend.upload(Tensor.ofInts(rows, rows.length))) {
            for (int layer = 0; layer < layers.size(); layer++) {
                try (Tensor k = backend.gatherRows(p.keys(layer), rowT); Tensor v = backend.gatherRows(p.values(layer), rowT)) {
                    writeCache(cache, layer, 0, k, v);
                }
            }
        }
    }

    /**
     * Writes keys and values k, v [B*T, kvHeads*headDim] (rope, if any, already applied) into cache
     * slots [start, start+T) of one layer, through {@link Backend#attention} (which writes them and
     * attends; its output is discarded).
     */
    public void writeCache(KvCache cache, int layer, int start, Tensor k, Tensor v) {
        int heads = config.numAttentionHeads(), kvHeads = config.numKeyValueHeads(), hd = config.headDim();
        int n = k.dim(0);
        if (n % cache.batch() != 0 || v.dim(0) != n) {
            throw new IllegalArgumentException("writeCache: k and v need batch " + cache.batch() + " x T rows, got " + n + " and " + v.dim(0));
        }
        if (start < 0 || start + n / cache.batch() > cache.capacity()) {
            throw new IllegalArgumentException("writeCache: slots [" + start + ", " + (start + n / cache.batch()) + ") do not fit a cache of "
                    + cache.capacity() + " slots");
        }
        try (Tensor q = backend.upload(Tensor.zeros(backend.activationDType(), n, heads * hd));
             Tensor pads = backend.upload(Tensor.ofInts(new int[cache.batch()], cache.batch()));
             Tensor ignored = backend.attention(q, k, v, cache, layer, start, pads, heads, kvHeads, hd, 1f, 0)) {
            // the write is the point; the attention output is not used
        }
    }

    /**
     * Rotates keys k [n, kvHeads*headDim] in place by the rope angle of {@code position} (may be
     * negative; no attention scaling): a key rotated by -P, seen by a query at position t, scores
     * as an unrotated key seen by that query at position t + P.
     */
    public void rotateKeysInPlace(Tensor k, int position) {
        if (RopeScaling.dependsOnSeqLen(config)) {
            throw new IllegalArgumentException("rotateKeysInPlace: \"dynamic\" rope scaling has no fixed frequencies to rotate by");
        }
        int n = k.dim(0);
        int[] pos = new int[n];
        java.util.Arrays.fill(pos, position);
        try (Tensor posT = backend.upload(Tensor.ofInts(pos, n))) {
            backend.ropeInPlace(k, posT, invFreq(config.maxPositionEmbeddings()), config.numKeyValueHeads(), config.headDim(), 1f);
        }
    }

    /**
     * The backward of {@link #rotateKeysInPlace}: turns the gradient w.r.t. keys rotated by
     * {@code position} into the gradient w.r.t. the keys before rotation, in place on
     * g [n, kvHeads*headDim] (activation dtype).
     */
    public void rotateKeyGradientsInPlace(Tensor g, int position) {
        if (RopeScaling.dependsOnSeqLen(config)) {
            throw new IllegalArgumentException("rotateKeyGradientsInPlace: \"dynamic\" rope scaling has no fixed frequencies to rotate by");
        }
        int n = g.dim(0);
        int[] pos = new int[n];
        java.util.Arrays.fill(pos, position);
        try (Tensor posT = backend.upload(Tensor.ofInts(pos, n))) {
            backend.ropeBackwardInPlace(g, posT, invFreq(config.maxPositionEmbeddings()), config.numKeyValueHeads(), config.headDim(), 1f);
        }
    }

    /** A prefix is written to slots before padStart's rows would begin: only unpadded batches can see it. */
    private void requireUnpadded(Tensor padStart) {
        for (int p : backend.toHost(padStart).toIntArray()) {
            if (p != 0) {
                throw new UnsupportedOperationException("prefix/prompt tuning with a left-padded batch is not supported (a row's "
                        + "pads would sit between the prefix and its prompt); run prompts of different lengths one at a time");
            }
        }
    }

    private void requireNoCachePrefix(String what) {
        if (cachePrefix != null) {
            throw new UnsupportedOperationException(what + " with a prefix/prompt tuning adapter attached is not supported (training "
                    + "the virtual tokens needs attention gradients w.r.t. cached keys); detach it with setCachePrefix(null)");
        }
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

    /** Loss and bookkeeping of one training forward/backward. */
    public record StepResult(double lossSum, long tokens, long activationBytes) {
        public double meanLoss() { return tokens == 0 ? Double.NaN : lossSum / tokens; }
    }

    /** Logit rows made at once in the loss: [rows x vocab] float32 is the largest temporary. */
    static final int LOSS_CHUNK_ROWS = 1024;

    /**
     * One training forward and backward over B rows of T tokens; adapters (the only trainable
     * parameters) accumulate their gradients. targets [B*T] are the next-token labels already
     * shifted (-100 = not trained); gradScale multiplies d(sum of token losses), e.g.
     * 1/(tokens in the whole accumulated batch) as transformers normalizes. With checkpointing,
     * only each layer's input is kept and the layer's forward is re-run during backward.
     *
     * @param segments per-token example ids for packed rows (no attention across examples), or null
     */
    public StepResult trainStep(int[] ids, int[] positions, int[] segments, int[] targets, int batch,
                                boolean checkpointing, float gradScale) {
        int n = ids.length, t = n / batch;
        if (n % batch != 0 || positions.length != n || targets.length != n || (segments != null && segments.length != n)) {
            throw new IllegalArgumentException("trainStep: ids, positions, targets (and segments) must all have batch x T = "
                    + n + " entries");
        }
        requireNoCachePrefix("trainStep");
        Backend b = backend;
        long tokens = 0;
        for (int y : targets) if (y != -100) tokens++;
        boolean offload = checkpointing && activationStore != ActivationStore.ON_DEVICE;
        List<Tensor> inputs = new ArrayList<>();                     // layer inputs kept on the device (null when offloaded)
        List<ActivationStore.Saved> saved = new ArrayList<>();       // layer inputs held by the activation store
        List<LayerActivations> acts = new ArrayList<>();
        long actBytes = 0;
        try (Tensor idT = b.upload(Tensor.ofInts(ids, n));
             Tensor posT = b.upload(Tensor.ofInts(positions, n));
             Tensor segT = segments == null ? null : b.upload(Tensor.ofInts(segments, n))) {
            Tensor inv = invFreq(t);
            float ropeScale = (float) RopeScaling.attentionScaling(config);
            Tensor x = embed(idT);
            for (DecoderLayer layer : layers) {
                // Offload starts copying the input out before the layer that reads it is queued, so the copy overlaps it.
                ActivationStore.Saved s = offload ? activationStore.save(x) : null;
                inputs.add(offload ? null : x);
                saved.add(s);
                LayerActivations a = checkpointing ? null : new LayerActivations();
                residency.enter(layer.index, true);
                Tensor out = layer.forwardTrain(b, config, x, posT, segT, inv, ropeScale, batch, a);
                residency.exit(layer.index);
                if (offload) {
                    actBytes += x.byteSize(); // counted as kept: it lives in host memory until the backward
                    activationStore.release(s, x);
                }
                x = out;
                if (a != null) {
                    acts.add(a);
                    actBytes += a.bytes();
                }
            }
            for (Tensor in : inputs) if (in != null) actBytes += in.byteSize();
            Tensor hidden = b.rmsNorm(x, finalNorm, (float) config.rmsNormEps());
            List<Tensor> gradRows = new ArrayList<>();
            double lossSum = chunkedLoss(hidden, targets, gradScale, gradRows);
            hidden.close();
            Tensor gHidden = gradRows.size() == 1 ? gradRows.get(0) : b.concatRows(gradRows);
            if (gradRows.size() > 1) gradRows.forEach(Tensor::close);
            Tensor g = b.rmsNormBackward(x, finalNorm, (float) config.rmsNormEps(), gHidden, null);
            gHidden.close();
            x.close();
            for (int i = layers.size() - 1; i >= 0; i--) {
                if (offload) {
                    inputs.set(i, activationStore.restore(saved.get(i)));
                    saved.set(i, null);
                    if (i > 0) activationStore.prefetch(saved.get(i - 1));
                }
                Tensor in = inputs.get(i);
                residency.enter(i, false);
                LayerActivations a;
                if (checkpointing) {
                    a = new LayerActivations();
                    layers.get(i).forwardTrain(b, config, in, posT, segT, inv, ropeScale, batch, a).close();
                } else {
                    a = acts.get(i);
                }
                Tensor gPrev = layers.get(i).backwardTrain(b, config, in, posT, segT, inv, ropeScale, batch, a, g);
                residency.exit(i);
                a.close();
                g.close();
                g = gPrev;
                in.close();
                inputs.set(i, null);
            }
            TokenEmbedding trainable = activeEmbedding();
            if (trainable != null) trainable.backward(b, idT, g); // modules_to_save embed_tokens
            g.close();
            return new StepResult(lossSum, tokens, actBytes);
        } finally {
            for (Tensor in : inputs) if (in != null) in.close();
            for (ActivationStore.Saved s : saved) if (s != null) activationStore.discard(s);
            for (LayerActivations a : acts) a.close();
        }
    }

    /**
     * Sum of the token losses of hidden [n, hidden] against targets (-100 ignored), in row chunks so
     * [rows x vocab] logits are the largest temporary. When gradRows is not null, the gradient
     * w.r.t. each chunk's hidden rows (d(loss sum) * gradScale, through the LM head) is appended to it.
     */
    private double chunkedLoss(Tensor hidden, int[] targets, float gradScale, List<Tensor> gradRows) {
        Backend b = backend;
        int n = targets.length;
        double lossSum = 0;
        for (int from = 0; from < n; from += LOSS_CHUNK_ROWS) {
            int rows = Math.min(LOSS_CHUNK_ROWS, n - from);
            int[] rowIdx = new int[rows];
            for (int i = 0; i < rows; i++) rowIdx[i] = from + i;
            try (Tensor r = b.upload(Tensor.ofInts(rowIdx, rows));
                 Tensor tg = b.upload(Tensor.ofInts(java.util.Arrays.copyOfRange(targets, from, from + rows), rows));
                 Tensor h = b.gatherRows(hidden, r);
                 Tensor logits = lmHead.forward(b, h)) {
                if (gradRows == null) {
                    try (Tensor losses = b.crossEntropy(logits, tg)) {
                        for (float l : b.toHost(losses).toFloatArray()) lossSum += l;
                    }
                } else {
                    Tensor[] lg = b.crossEntropyWithGrad(logits, tg, gradScale);
                    for (float l : b.toHost(lg[0]).toFloatArray()) lossSum += l;
                    gradRows.add(lmHead.backward(b, h, lg[1]));
                    lg[0].close();
                    lg[1].close();
                }
            }
        }
        return lossSum;
    }

    /**
     * Loss of B rows of T tokens without gradients (evaluation during training): the training
     * forward (segments for packed rows) and a chunked cross-entropy over targets != -100.
     */
    public dev.qlora4j.infer.LossEvaluator.LossSum evalStep(int[] ids, int[] positions, int[] segments, int[] targets,
                                                           int batch) {
        int n = ids.length, t = n / batch;
        requireNoCachePrefix("evalStep");
        Backend b = backend;
        long tokens = 0;
        for (int y : targets) if (y != -100) tokens++;
        double lossSum = 0;
        try (Tensor idT = b.upload(Tensor.ofInts(ids, n));
             Tensor posT = b.upload(Tensor.ofInts(positions, n));
             Tensor segT = segments == null ? null : b.upload(Tensor.ofInts(segments, n))) {
            Tensor inv = invFreq(t);
            float ropeScale = (float) RopeScaling.attentionScaling(config);
            Tensor x = embed(idT);
            for (DecoderLayer layer : layers) {
                residency.enter(layer.index, true);
                Tensor next = layer.forwardTrain(b, config, x, posT, segT, inv, ropeScale, batch, null);
                residency.exit(layer.index);
                x.close();
                x = next;
            }
            try (Tensor hidden = b.rmsNorm(x, finalNorm, (float) config.rmsNormEps())) {
                x.close();
                lossSum = chunkedLoss(hidden, targets, 0f, null);
            }
        }
        return new dev.qlora4j.infer.LossEvaluator.LossSum(lossSum, tokens);
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
            tied = lmHeadIsEmbedding(); // an adapter's head copy unties it: close() and weightBytes() then count it
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

    /** True while the LM head is the embedding table itself (tied and not replaced by an adapter's copy). */
    public boolean lmHeadIsEmbedding() {
        return lmHead instanceof DenseLinear d && d.weight() == embed;
    }

    /** Where the active trainable embedding comes from (peft's embed_tokens copy), or null. */
    private java.util.function.Supplier<TokenEmbedding> embeddingProvider;

    /**
     * Lets an adapter replace the embedding: the supplier is asked at every step (the active adapter
     * may change) and may return null for the frozen table.
     */
    public void setEmbeddingProvider(java.util.function.Supplier<TokenEmbedding> provider) {
        this.embeddingProvider = provider;
    }

    private TokenEmbedding activeEmbedding() {
        return embeddingProvider == null ? null : embeddingProvider.get();
    }

    /** ids I32 [n] -> [n, hidden] through the active trainable copy or the frozen table. */
    private Tensor embed(Tensor ids) {
        TokenEmbedding e = activeEmbedding();
        return e != null ? e.forward(backend, ids) : backend.embedding(ids, embed);
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

    /** How offloaded layers are streamed in (LayerResidency.NONE when every layer is on the device). */
    public LayerResidency residency() { return residency; }

    /**
     * Where gradient checkpointing keeps layer inputs during a training step (null: on the device). Only used
     * with checkpointing; the model does not close the store.
     */
    public void setActivationStore(ActivationStore store) {
        activationStore = store == null ? ActivationStore.ON_DEVICE : store;
    }

    public ActivationStore activationStore() { return activationStore; }

    @Override
    public void close() {
        for (DecoderLayer l : layers) l.close();
        embed.close();
        finalNorm.close();
        if (!tied) lmHead.close();
        if (invFreq != null) invFreq.close();
        residency.close();
        activationStore.close();
    }
}
