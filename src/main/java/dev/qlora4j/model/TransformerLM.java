package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.DeviceTransfer;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.backend.cuda.CudaBackend;
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
 *
 * <p>Several devices ({@link ModelDevices}): each part lives and runs on its own backend, as accelerate's
 * sequential model parallelism does it. Hidden states cross to the next layer's device (and gradients back in
 * training) through {@link DeviceTransfer}; each layer's KV cache and adapter parameters stay on its device; the
 * residual add + RMSNorm fusion is not used across a boundary; inputs (ids, positions, pad starts) are tensors of
 * {@link #backend()}, the head's backend, where logits and the loss are made, and are copied to the other devices
 * once per call. Decode graphs are switched off on the model's CUDA backends (a capture records one stream of one
 * device): decoding over several GPUs launches kernels directly, with the same tokens.
 */
public final class TransformerLM implements AutoCloseable {
    private final ModelConfig config;
    private final Backend backend;   // the head's (final norm, LM head): inputs arrive and outputs leave here
    private final ModelDevices devices;
    private Tensor embed;            // [vocab, hidden] on devices.embedding() (or host memory it reads: setEmbeddingInHostMemory)
    private boolean embedInHostMemory;
    private final List<DecoderLayer> layers;
    private final Tensor finalNorm;  // [hidden]
    private Linear lmHead;           // [vocab, hidden]; shares embed when tied
    private boolean tied;
    private final Map<Backend, Tensor> invFreqs = new java.util.IdentityHashMap<>(); // [headDim/2] F32 per device, for invFreqSeqLen
    private int invFreqSeqLen = -1;
    private Tensor headCopyOfEmbed;  // [vocab, hidden] on the head's device: a tied LM head when the embedding lives elsewhere
    private LayerHooks hooks = LayerHooks.NONE;
    private CachePrefix cachePrefix; // preloaded into every new cache while set (prefix/prompt tuning)
    private TrainingPrefix trainingPrefix; // prefix tuning's learned keys/values in training steps, or null
    /** Caches made by newCache with a prefix in their first slots, and that prefix's length (identity keys). */
    private final Map<KvCache, Integer> prefixedCaches = Collections.synchronizedMap(new WeakHashMap<>());
    /** Streams offloaded layers' weights in around each use (NONE: every layer stays on the device). */
    private LayerResidency residency = LayerResidency.NONE;
    /** Where checkpointed layer inputs wait for the backward (ON_DEVICE, or pinned host memory). */
    private ActivationStore activationStore = ActivationStore.ON_DEVICE;
    /** The store of each device when they differ (several GPUs with activation offload); empty: activationStore everywhere. */
    private final Map<Backend, ActivationStore> activationStores = new java.util.IdentityHashMap<>();
    /** Whether a checkpointed step also keeps each layer's attention result on its device: null = auto (see setCheckpointKeepAttention). */
    private Boolean checkpointKeepAttention = null;
    /** Whether a checkpointed step also keeps each layer's attention block output: null = auto (see setCheckpointKeepResidual). */
    private Boolean checkpointKeepResidual = null;
    /** Whether a checkpointed step lets a layer's recompute keep its dequantized weights for its backward (see setCheckpointKeepDequantized). */
    private boolean checkpointKeepDequantized = true;

    private TransformerLM(ModelConfig config, ModelDevices devices, Tensor embed, List<DecoderLayer> layers,
                          Tensor finalNorm, Linear lmHead, boolean tied) {
        this.config = config;
        this.devices = devices;
        this.backend = devices.head();
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
        return load(c, w, ModelDevices.single(b, c.numHiddenLayers()), linears, residency);
    }

    /**
     * The model over several devices: the embedding is built on devices.embedding(), layer i on devices.layer(i),
     * the final norm and LM head on devices.head() (a tied head gets its own copy of the embedding table there when
     * the embedding lives on another device). The model closes residency and devices' owned backends, also when
     * loading fails.
     */
    public static TransformerLM load(ModelConfig c, WeightSource w, ModelDevices devices, LinearFactory linears,
                                     LayerResidency residency) {
        try {
            if (devices.numLayers() != c.numHiddenLayers()) {
                throw new IllegalArgumentException("the device assignment has " + devices.numLayers() + " layers but config.json says "
                        + "num_hidden_layers = " + c.numHiddenLayers());
            }
            TransformerLM m = loadLayers(c, w, devices, linears, residency);
            m.residency = residency;
            if (!devices.isSingle()) {
                for (Backend b : devices.backends()) if (b instanceof CudaBackend cuda) cuda.disableDecodeGraphs();
            }
            return m;
        } catch (RuntimeException e) {
            residency.close();
            devices.close();
            throw e;
        }
    }

    private static TransformerLM loadLayers(ModelConfig c, WeightSource w, ModelDevices devices, LinearFactory linears,
                                            LayerResidency residency) {
        Backend eb = devices.embedding();
        Tensor embed = eb.upload(w.get("model.embed_tokens.weight"));
        checkShape(embed, w, "model.embed_tokens.weight", c.vocabSize(), c.hiddenSize());
        List<DecoderLayer> layers = new ArrayList<>();
        for (int i = 0; i < c.numHiddenLayers(); i++) {
            String p = "model.layers." + i + ".";
            Backend b = devices.layer(i);
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
        Backend hb = devices.head();
        Tensor norm = hb.upload(w.get("model.norm.weight"));
        checkShape(norm, w, "model.norm.weight", c.hiddenSize());
        // transformers ties when tie_word_embeddings is set, and also falls back to the embedding
        // when a checkpoint simply omits lm_head.weight.
        boolean tied = c.tieWordEmbeddings() || !w.has("lm_head.weight");
        Tensor headCopy = tied && hb != eb ? DeviceTransfer.copy(embed, eb, hb) : null;
        Linear head = tied ? new DenseLinear(headCopy != null ? headCopy : embed, null) : linears.create("lm_head", w, hb, false);
        checkLinear(head, w, "lm_head", c.vocabSize(), c.hiddenSize());
        TransformerLM m = new TransformerLM(c, devices, embed, layers, norm, head, tied);
        m.headCopyOfEmbed = headCopy;
        return m;
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

    /**
     * The head's backend (final norm, LM head): where callers put the inputs of {@link #forward} and read hidden
     * states, logits and losses. The only backend on a single device.
     */
    public Backend backend() { return backend; }

    /** Which backend runs which part of the model. */
    public ModelDevices devices() { return devices; }

    /** The backend a module or parameter lives on, by its name (see {@link ModelDevices#forName}). */
    public Backend backendFor(String name) { return devices.forName(name); }

    private void requireSingleDevice(String what) {
        if (!devices.isSingle()) {
            throw new UnsupportedOperationException(what + " is not supported on a model split over several devices ("
                    + devices.describe() + "): load the model on one device (no --device-map over several GPUs)");
        }
    }

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
        if (!devices.isSingle()) return new SplitKvCache(devices, batch, config.numKeyValueHeads(), capacity, config.headDim());
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
     * One step: ids and positions I32 [B*T] on the device of {@link #backend()} (row-major over batch then time),
     * cache slots [start, start+T), padStart I32 [B]. Returns the final hidden states [B*T, hidden].
     * On a cache made with a {@link CachePrefix}, slot s of the caller is slot s + prefix length.
     */
    public Tensor forward(Tensor ids, Tensor positions, KvCache cache, int start, Tensor padStart) {
        if (devices.isSingle()) return runLayers(embed(ids), devices.embedding(), true, positions, cache, start, padStart);
        Backend eb = devices.embedding();
        Tensor x;
        if (eb == backend) {
            x = embed(ids);
        } else {
            try (Tensor idsHere = DeviceTransfer.copy(ids, backend, eb)) {
                x = embed(idsHere);
            }
        }
        return runLayers(x, eb, true, positions, cache, start, padStart);
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
        return runLayers(x, backend, false, positions, cache, start, padStart);
    }

    /**
     * The decoder stack and final norm; x lives on backend xb; closes x when owned (as soon as the first layer is
     * done with it). Over several devices x moves to each layer's device on the way and the result is on the head's.
     */
    private Tensor runLayers(Tensor x, Backend xb, boolean ownsX, Tensor positions, KvCache cache, int start, Tensor padStart) {
        SplitKvCache split = null;
        if (!devices.isSingle()) {
            if (!(cache instanceof SplitKvCache s)) {
                throw new IllegalArgumentException("this model runs over several devices (" + devices.describe()
                        + "): use a KV cache from its newCache, not one of a single backend");
            }
            split = s;
        }
        int offset = cacheOffset(cache);
        if (offset > 0 && start == 0) requireUnpadded(padStart);
        int slot = start + offset;
        int seqLen = slot + x.dim(0) / cache.batch();
        float ropeScale = (float) RopeScaling.attentionScaling(config);
        boolean owned = ownsX;
        Tensor h = null; // rmsNorm of x by the next layer's input norm, from the previous layer's fused add
        Backend cur = xb;
        try (PerDevice pos = PerDevice.of(positions, backend); PerDevice pads = PerDevice.of(padStart, backend)) {
            for (int i = 0; i < layers.size(); i++) {
                Backend lb = devices.layer(i);
                if (lb != cur) { // a device boundary: h is null here (no fusion across it)
                    Tensor moved = DeviceTransfer.copy(x, cur, lb);
                    if (owned) x.close();
                    x = moved;
                    owned = true;
                    cur = lb;
                }
                // A streamed layer's norm weights live in its upload slot only while it runs: fuse its input norm into
                // the previous layer's last add only when no layer streams (the final norm always stays resident),
                // and never across a device boundary (the norm weight is on the other device).
                Backend nextDevice = i + 1 == layers.size() ? backend : devices.layer(i + 1);
                Tensor nextNorm = nextDevice != lb ? null : i + 1 == layers.size() ? finalNorm
                        : residency.streams() ? null : layers.get(i + 1).inputNorm;
                KvCache layerCache = split == null ? cache : split.part(i);
                int cacheLayer = split == null ? layers.get(i).index : split.localLayer(i);
                residency.enter(layers.get(i).index, true);
                DecoderLayer.Output next = layers.get(i).forward(lb, config, x, h, nextNorm, pos.on(lb), invFreq(lb, seqLen),
                        ropeScale, layerCache, cacheLayer, slot, pads.on(lb));
                residency.exit(layers.get(i).index);
                if (owned) x.close();
                x = next.out();
                h = next.normed();
                owned = true;
            }
        }
        if (cur != backend) { // the last layer ran on another device than the head
            Tensor moved = DeviceTransfer.copy(x, cur, backend);
            if (owned) x.close();
            x = moved;
            owned = true;
        }
        if (h == null) h = backend.rmsNorm(x, finalNorm, (float) config.rmsNormEps()); // no layers, or a boundary before the head
        if (owned) x.close();
        return h;
    }

    // ---- hooks and cache prefixes (bottleneck adapters, prefix and prompt tuning) ----

    /** The hooks every decoder layer calls after its sublayers ({@link LayerHooks#NONE} by default). */
    public LayerHooks hooks() { return hooks; }

    /** Sets the layer hooks (e.g. a BottleneckModel); null restores {@link LayerHooks#NONE}. */
    public void setHooks(LayerHooks h) {
        if (h != null && h != LayerHooks.NONE) requireSingleDevice("layer hooks (bottleneck adapters)");
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
            requireSingleDevice("prefix/prompt tuning");
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
        if (p != null) requireSingleDevice("prefix tuning");
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
        Backend b = backend;
        KvCache target = cache;
        int targetLayer = layer;
        if (cache instanceof SplitKvCache split) { // k and v are the head's: the layer's part may be on another device
            b = devices.layer(layer);
            target = split.part(layer);
            targetLayer = split.localLayer(layer);
        }
        try (Tensor kHere = b == backend ? null : DeviceTransfer.copy(k, backend, b);
             Tensor vHere = b == backend ? null : DeviceTransfer.copy(v, backend, b);
             Tensor q = b.upload(Tensor.zeros(b.activationDType(), n, heads * hd));
             Tensor pads = b.upload(Tensor.ofInts(new int[cache.batch()], cache.batch()));
             Tensor ignored = b.attention(q, kHere == null ? k : kHere, vHere == null ? v : vHere, target, targetLayer, start, pads,
                     heads, kvHeads, hd, 1f, 0)) {
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
            backend.ropeInPlace(k, posT, invFreq(backend, config.maxPositionEmbeddings()), config.numKeyValueHeads(), config.headDim(), 1f);
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
            backend.ropeBackwardInPlace(g, posT, invFreq(backend, config.maxPositionEmbeddings()), config.numKeyValueHeads(), config.headDim(), 1f);
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
    private Tensor invFreq(Backend b, int seqLen) {
        int key = RopeScaling.dependsOnSeqLen(config) ? Math.max(seqLen, config.maxPositionEmbeddings()) : 0;
        if (key != invFreqSeqLen) {
            for (Tensor t : invFreqs.values()) t.close();
            invFreqs.clear();
            invFreqSeqLen = key;
        }
        Tensor t = invFreqs.get(b);
        if (t == null) {
            float[] f = RopeScaling.invFreq(config, seqLen);
            t = b.upload(Tensor.of(f, f.length));
            invFreqs.put(b, t);
        }
        return t;
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
     * only each layer's input is kept and the layer's forward is re-run during backward as far as the
     * backward reads it (up to the down projection's input: not the layer output). Without activation offload,
     * each layer's attention result (out + lse) and attention block output may be kept too
     * ({@link #setCheckpointKeepAttention}, {@link #setCheckpointKeepResidual}; auto by default, within
     * {@link #autoKeepBudget}): the re-run then skips the attention forward and the o projection (same numbers).
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
        long tokens = 0;
        for (int y : targets) if (y != -100) tokens++;
        boolean offload = checkpointing && (activationStore != ActivationStore.ON_DEVICE || !activationStores.isEmpty());
        // Offload exists to bound GPU memory by host memory: kept attention results would grow with the context on
        // the GPU, so with offload the recompute runs the attention again (the behaviour before keep-attention).
        boolean keepAttention = checkpointing && !offload && keepsAttention(batch, n / batch);
        boolean keepResidual = checkpointing && !offload && keepsResidual(batch, n / batch);
        List<Tensor> inputs = new ArrayList<>();                     // layer inputs kept on their device (null when offloaded)
        List<ActivationStore.Saved> saved = new ArrayList<>();       // layer inputs held by the activation store
        List<LayerActivations> acts = new ArrayList<>();            // per layer: everything, or what checkpointing keeps
        long actBytes = 0;
        Backend eb = devices.embedding();
        Tensor g = null;                                             // the gradient flowing back, on gb
        try (Tensor idT = eb.upload(Tensor.ofInts(ids, n));
             Tensor posHost = Tensor.ofInts(positions, n);
             Tensor segHost = segments == null ? null : Tensor.ofInts(segments, n);
             HostUploads up = new HostUploads()) {
            float ropeScale = (float) RopeScaling.attentionScaling(config);
            Tensor x = embed(idT);
            Backend cur = eb;
            for (DecoderLayer layer : layers) {
                Backend lb = devices.layer(layer.index);
                if (lb != cur) { // the previous layer's output is needed only as this layer's input: move it
                    Tensor moved = DeviceTransfer.copy(x, cur, lb);
                    x.close();
                    x = moved;
                    cur = lb;
                }
                ActivationStore store = storeFor(lb);
                // Offload starts copying the input out before the layer that reads it is queued, so the copy overlaps it.
                ActivationStore.Saved s = offload ? store.save(x) : null;
                inputs.add(offload ? null : x);
                saved.add(s);
                LayerActivations a = !checkpointing ? new LayerActivations()
                        : keepAttention || keepResidual ? LayerActivations.checkpointKept(keepAttention, keepResidual) : null;
                residency.enter(layer.index, true);
                Tensor out = layer.forwardTrain(lb, config, x, up.on(lb, posHost), up.on(lb, segHost), invFreq(lb, t), ropeScale, batch, a);
                residency.exit(layer.index);
                if (offload) {
                    actBytes += x.byteSize(); // counted as kept: it lives in host memory until the backward
                    store.release(s, x);
                }
                x = out;
                if (a != null) {
                    acts.add(a);
                    actBytes += a.bytes();
                }
            }
            for (Tensor in : inputs) if (in != null) actBytes += in.byteSize();
            Backend b = backend; // the head: final norm, LM head and loss
            if (cur != b) {
                Tensor moved = DeviceTransfer.copy(x, cur, b);
                x.close();
                x = moved;
            }
            Tensor hidden = b.rmsNorm(x, finalNorm, (float) config.rmsNormEps());
            List<Tensor> gradRows = new ArrayList<>();
            double lossSum = chunkedLoss(hidden, targets, gradScale, gradRows);
            hidden.close();
            Tensor gHidden = gradRows.size() == 1 ? gradRows.get(0) : b.concatRows(gradRows);
            if (gradRows.size() > 1) gradRows.forEach(Tensor::close);
            g = b.rmsNormBackward(x, finalNorm, (float) config.rmsNormEps(), gHidden, null);
            Backend gb = b;
            gHidden.close();
            x.close();
            TokenEmbedding trainable = activeEmbedding();   // modules_to_save embed_tokens, or null (frozen)
            for (int i = layers.size() - 1; i >= 0; i--) {
                Backend lb = devices.layer(i);
                if (lb != gb) { // the gradient crosses back to the layer's device
                    Tensor moved = DeviceTransfer.copy(g, gb, lb);
                    g.close();
                    g = moved;
                    gb = lb;
                }
                if (offload) {
                    inputs.set(i, storeFor(lb).restore(saved.get(i)));
                    saved.set(i, null);
                    if (i > 0) storeFor(devices.layer(i - 1)).prefetch(saved.get(i - 1));
                }
                Tensor in = inputs.get(i);
                Tensor pos = up.on(lb, posHost), seg = up.on(lb, segHost), inv = invFreq(lb, t);
                residency.enter(i, false);
                LayerActivations a;
                Tensor gPrev;
                // the recompute's dequantized weights are the backward's too (kept within a budget, freed after it)
                boolean keepDequantized = checkpointing && checkpointKeepDequantized;
                if (keepDequantized) lb.keepDequantizedWeights(true);
                try {
                    if (checkpointing) {
                        a = new LayerActivations();
                        if (keepAttention) a.attn = acts.get(i).takeAttention(); // the recompute uses it instead of the attention
                        if (keepResidual) a.resid = acts.get(i).takeResidual();  // ... and instead of the o projection
                        try {
                            // Only what backward reads: the layer output (down, MLP hook, residual add) is not remade.
                            layers.get(i).recomputeForBackward(lb, config, in, pos, seg, inv, ropeScale, batch, a);
                        } catch (RuntimeException e) {
                            a.close();
                            throw e;
                        }
                    } else {
                        a = acts.get(i);
                    }
                    // grad_x of the first layer feeds only a trainable embedding
                    gPrev = layers.get(i).backwardTrain(lb, config, in, pos, seg, inv, ropeScale, batch, a, g,
                            i > 0 || trainable != null);
                } finally {
                    if (keepDequantized) lb.keepDequantizedWeights(false);
                }
                residency.exit(i);
                a.close();
                g.close();
                g = gPrev;
                in.close();
                inputs.set(i, null);
            }
            if (trainable != null) {
                if (gb != eb) {
                    Tensor moved = DeviceTransfer.copy(g, gb, eb);
                    g.close();
                    g = moved;
                }
                trainable.backward(eb, idT, g);
            }
            return new StepResult(lossSum, tokens, actBytes);
        } finally {
            if (g != null) g.close();
            for (Tensor in : inputs) if (in != null) in.close();
            for (int i = 0; i < saved.size(); i++) if (saved.get(i) != null) storeFor(devices.layer(i)).discard(saved.get(i));
            for (LayerActivations a : acts) a.close();
        }
    }

    /** The activation store of the device a layer runs on. */
    private ActivationStore storeFor(Backend b) {
        ActivationStore s = activationStores.get(b);
        return s != null ? s : activationStore;
    }

    /**
     * Host int arrays uploaded once per device that reads them during a step (positions, segments), closed with
     * this. A host tensor that a CPU backend uses as it is is not closed here (its owner closes it).
     */
    private static final class HostUploads implements AutoCloseable {
        private final Map<Backend, Map<Tensor, Tensor>> uploads = new java.util.IdentityHashMap<>();

        /** host (null: null) on backend b. */
        Tensor on(Backend b, Tensor host) {
            if (host == null) return null;
            return uploads.computeIfAbsent(b, k -> new java.util.IdentityHashMap<>()).computeIfAbsent(host, b::upload);
        }

        @Override
        public void close() {
            for (Map<Tensor, Tensor> m : uploads.values()) {
                for (var e : m.entrySet()) if (e.getValue() != e.getKey()) e.getValue().close();
            }
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
        long tokens = 0;
        for (int y : targets) if (y != -100) tokens++;
        double lossSum = 0;
        Backend eb = devices.embedding();
        try (Tensor idT = eb.upload(Tensor.ofInts(ids, n));
             Tensor posHost = Tensor.ofInts(positions, n);
             Tensor segHost = segments == null ? null : Tensor.ofInts(segments, n);
             HostUploads up = new HostUploads()) {
            float ropeScale = (float) RopeScaling.attentionScaling(config);
            Tensor x = embed(idT);
            Backend cur = eb;
            for (DecoderLayer layer : layers) {
                Backend lb = devices.layer(layer.index);
                if (lb != cur) {
                    Tensor moved = DeviceTransfer.copy(x, cur, lb);
                    x.close();
                    x = moved;
                    cur = lb;
                }
                residency.enter(layer.index, true);
                Tensor next = layer.forwardTrain(lb, config, x, up.on(lb, posHost), up.on(lb, segHost), invFreq(lb, t), ropeScale,
                        batch, null);
                residency.exit(layer.index);
                x.close();
                x = next;
            }
            if (cur != backend) {
                Tensor moved = DeviceTransfer.copy(x, cur, backend);
                x.close();
                x = moved;
            }
            try (Tensor hidden = backend.rmsNorm(x, finalNorm, (float) config.rmsNormEps())) {
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
        return lmHead instanceof DenseLinear d && (d.weight() == embed || (headCopyOfEmbed != null && d.weight() == headCopyOfEmbed));
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
        Backend eb = devices.embedding();
        return e != null ? e.forward(eb, ids) : eb.embedding(ids, embed);
    }

    /** The embedding table [vocab, hidden] (for embedding adapters and modules_to_save). */
    public Tensor embedTokens() { return embed; }

    /**
     * Moves the token embedding table to page-locked host memory that the GPU reads over the bus (true), or back to
     * GPU memory (false). The lookup reads only the rows of a step's tokens (16 MiB for 2,048 Llama-7B tokens: about 1
     * ms over PCIe), while the table takes vocab x hidden of GPU memory the whole time (250 MiB for Llama-7B, 1 GiB for
     * Llama 3's 128,256-token vocabulary): room for longer contexts, larger batches or kept activations. The values
     * read are the same bits. Refused for a tied LM head (the head's product would read the whole table over the bus
     * per step); a no-op on the CPU backend. Adapters that copy the table (modules_to_save) copy from where it is.
     */
    public void setEmbeddingInHostMemory(boolean inHost) {
        if (inHost == embedInHostMemory) return;
        Backend eb = devices.embedding();
        if (inHost) {
            if (tied || lmHeadIsEmbedding()) {
                throw new IllegalStateException("the LM head is tied to the token embedding (tie_word_embeddings): keeping the table "
                        + "in host memory would stream all of it per step; leave the embedding on the GPU");
            }
            Tensor host = eb.hostMappedCopy(embed);
            if (host == null) return;   // the backend's tensors are in host memory already
            embed.close();
            embed = host;
            embedInHostMemory = true;
        } else {
            Tensor back = eb.upload(eb.toHost(embed));
            embed.close();
            embed = back;
            embedInHostMemory = false;
        }
    }

    /** Whether the token embedding table is in host memory the GPU reads ({@link #setEmbeddingInHostMemory}). */
    public boolean embeddingInHostMemory() { return embedInHostMemory; }

    public List<DecoderLayer> layers() { return java.util.Collections.unmodifiableList(layers); }

    public Tensor finalNorm() { return finalNorm; }

    /** Bytes of all weights (the token embedding counted also when it lives in host memory: setEmbeddingInHostMemory). */
    public long weightBytes() {
        long n = embed.byteSize() + finalNorm.byteSize() + (tied ? 0 : lmHead.weightBytes())
                + (tied && headCopyOfEmbed != null ? headCopyOfEmbed.byteSize() : 0);
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

    /**
     * One activation store per device of a split model (each keeps the inputs of the layers running on its device);
     * devices missing from the map use the single store. The model closes them.
     */
    public void setActivationStores(Map<Backend, ActivationStore> stores) {
        for (ActivationStore s : activationStores.values()) s.close();
        activationStores.clear();
        activationStores.putAll(stores);
    }

    public ActivationStore activationStore() { return activationStore; }

    /**
     * Under gradient checkpointing, whether each layer's attention result (out [B*T, heads*headDim] in the
     * activation dtype + lse F32 [B, heads, T]) is kept on its device from the forward to the backward, so the
     * backward's recompute runs the layer's projections, norms and MLP activation but not the attention forward.
     * The attention is deterministic, so loss and gradients are bit for bit those of the full recompute; the cost is
     * {@link #keptAttentionBytes} (16 MiB per Llama-7B layer at 2048 tokens), counted in
     * {@link StepResult#activationBytes()}. Ignored with activation offload (the attention is recomputed there,
     * keeping GPU memory independent of the context) and without checkpointing.
     *
     * <p>true / false force it; null (the default) is auto: kept when the whole model's kept results take at most
     * {@link #autoKeepBudget} (1 GiB, or 1/32 of the device's memory when that is more). On the H200 the Llama-7B
     * shape at 2048 tokens keeps 0.5 GiB and steps 3.5% faster (183.7 / 185.9 against 192.4 / 191.3 ms); longer
     * contexts and larger batches, where memory is what runs out first, recompute unless asked.
     */
    public void setCheckpointKeepAttention(Boolean keep) {
        checkpointKeepAttention = keep;
    }

    /**
     * The least size of what checkpointing keeps besides the layer inputs (all layers, one step: the attention
     * results, then the attention block outputs) the auto settings of {@link #setCheckpointKeepAttention} and
     * {@link #setCheckpointKeepResidual} accept; see {@link #autoKeepBudget}.
     */
    public static final long AUTO_KEEP_ATTENTION_BYTES = 1L << 30;

    /** The share of the device's memory the auto keep budget may take: 1 / AUTO_KEEP_DEVICE_SHARE of it. */
    public static final int AUTO_KEEP_DEVICE_SHARE = 32;

    /**
     * The size auto lets checkpointing keep besides the layer inputs: {@link #AUTO_KEEP_ATTENTION_BYTES} (1 GiB), or
     * 1/32 of the memory of the device the model's head runs on when that is more (4.4 GiB on a 141 GB H200, 2.5 GiB
     * on an 80 GB card), so larger cards keep more at larger batches. A small share on purpose: what is kept grows
     * with batch x tokens, and the rest of the device is the room for everything else a step holds.
     */
    public long autoKeepBudget() {
        long device = backend.deviceMemoryBytes();
        return Math.max(AUTO_KEEP_ATTENTION_BYTES, device > 0 ? device / AUTO_KEEP_DEVICE_SHARE : 0);
    }

    /** Bytes every layer's kept attention result takes for batch rows of tokens (out in the activation dtype + F32 lse). */
    public long keptAttentionBytes(int batch, int tokens) {
        long rows = (long) batch * tokens, heads = config.numAttentionHeads();
        long perLayer = rows * heads * config.headDim() * backend.activationDType().byteSize() + 4L * rows * heads;
        return perLayer * layers.size();
    }

    /** Bytes every layer's kept attention block output (resid [B*T, hidden] in the activation dtype) takes. */
    public long keptResidualBytes(int batch, int tokens) {
        return (long) batch * tokens * config.hiddenSize() * backend.activationDType().byteSize() * layers.size();
    }

    /**
     * Whether a checkpointed step of batch rows of tokens keeps the attention results (without activation offload): the
     * forced setting, or auto's choice ({@link #keptAttentionBytes} at most {@link #autoKeepBudget}).
     */
    public boolean keepsAttention(int batch, int tokens) {
        return checkpointKeepAttention != null ? checkpointKeepAttention
                : keptAttentionBytes(batch, tokens) <= autoKeepBudget();
    }

    /**
     * Whether a checkpointed step of batch rows of tokens keeps the attention block outputs (without activation
     * offload): the forced setting, or auto's choice: the attention results come first (they save more time per byte),
     * so auto keeps the outputs when they fit in {@link #autoKeepBudget} beside the kept attention results.
     */
    public boolean keepsResidual(int batch, int tokens) {
        if (checkpointKeepResidual != null) return checkpointKeepResidual;
        long attention = keepsAttention(batch, tokens) ? keptAttentionBytes(batch, tokens) : 0;
        return attention + keptResidualBytes(batch, tokens) <= autoKeepBudget();
    }

    /**
     * Under gradient checkpointing, whether each layer's attention block output (resid = x + o(attention), [B*T,
     * hidden] in the activation dtype) is kept on its device from the forward to the backward, so the backward's
     * recompute skips the o projection (with its adapter) and the residual add: one of a layer's seven projections,
     * ~2% of a Llama-7B step. Same bits as the full recompute; the cost is {@link #keptResidualBytes} (16 MiB per
     * Llama-7B layer at 2048 tokens), counted in {@link StepResult#activationBytes()}. Ignored with activation offload
     * and without checkpointing. true / false force it; null (the default) is auto (see {@link #keepsResidual}).
     */
    public void setCheckpointKeepResidual(Boolean keep) {
        checkpointKeepResidual = keep;
    }

    /** The setting of {@link #setCheckpointKeepResidual}: true, false, or null for auto. */
    public Boolean checkpointKeepResidual() { return checkpointKeepResidual; }

    /** The setting of {@link #setCheckpointKeepAttention}: true, false, or null for auto. */
    public Boolean checkpointKeepAttention() { return checkpointKeepAttention; }

    /**
     * Under gradient checkpointing, whether a layer's recompute keeps the weights it dequantizes for that layer's
     * backward (Backend#keepDequantizedWeights: the CUDA backend keeps up to -Dqlora4j.cuda.dequantCacheMiB, 512 MiB by
     * default, and frees them when the layer's backward ends), so the backward does not dequantize them again. Same loss
     * and gradients; Llama-7B at 2,048 tokens on an H200: 2.5% faster for ~0.25 GiB more peak memory. Default true.
     */
    public void setCheckpointKeepDequantized(boolean keep) { checkpointKeepDequantized = keep; }

    public boolean checkpointKeepDequantized() { return checkpointKeepDequantized; }

    @Override
    public void close() {
        for (DecoderLayer l : layers) l.close();
        embed.close();
        finalNorm.close();
        if (!tied) lmHead.close();
        if (tied && headCopyOfEmbed != null) headCopyOfEmbed.close(); // untied, the replacing head owns what it wraps
        for (Tensor t : invFreqs.values()) t.close();
        invFreqs.clear();
        residency.close();
        activationStore.close();
        for (ActivationStore s : activationStores.values()) s.close();
        devices.close();
    }
}
