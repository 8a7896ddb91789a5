package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Path;

/**
 * A peft PREFIX_TUNING adapter at inference. Its {@code prompt_embeddings} [P, L*2*KV*D] hold,
 * for each of the P virtual tokens, the key and value every layer's attention sees in front of
 * the sequence: element ((layer*2 + j)*KV + h)*D + d, j = 0 key, j = 1 value (the view
 * [P, L, 2, KV, D] peft builds its past_key_values from; KV = num_key_value_heads, as peft 0.21
 * sizes it for grouped-query attention). With prefix_projection the saved tensor already holds
 * the projected values (peft saves the encoder's output), so the file is used as it is.
 *
 * <p>peft/transformers semantics reproduced: the virtual keys go into cache slots [0, P)
 * <b>unrotated</b>, the T real tokens take positions P .. P+T-1 (the cache length) and attend all P
 * virtual slots plus the causal real tokens. Here the real tokens keep positions 0 .. T-1 (what
 * {@link dev.qlora4j.infer.Generator}, CausalLM.logits and LossEvaluator pass) and the virtual keys
 * are rotated by -P once instead: rope makes a score depend only on the angle between query and
 * key, so a query at t against a key rotated by -P scores as a query at t + P against the unrotated
 * key.
 *
 * <p>{@link #attach()} makes every cache the model creates start with the prefix (see
 * {@link TransformerLM#setCachePrefix} for its limits: no left-padded batches, no "dynamic" rope,
 * no training). On CUDA, recorded decode steps (graphs) read the start slot on the device and do not
 * know the prefix offset: generate with decode graphs off (-Dqlora4j.cuda.graphs=false) unless
 * Generator skips them for prefixed caches.
 */
public final class PrefixTuning implements TransformerLM.CachePrefix, AutoCloseable {
    private final PrefixTuningConfig config;
    private final TransformerLM model;
    private final int positionStart;
    private final KvPrefix prefix;

    private PrefixTuning(PrefixTuningConfig config, TransformerLM model, int positionStart, KvPrefix prefix) {
        this.config = config;
        this.model = model;
        this.positionStart = positionStart;
        this.prefix = prefix;
    }

    /** Loads adapter_config.json (peft_type PREFIX_TUNING) and prompt_embeddings from an adapter folder. */
    public static PrefixTuning load(Path adapterDir, TransformerLM model) {
        PeftConfig pc = PeftConfigs.load(adapterDir);
        if (!(pc instanceof PrefixTuningConfig cfg)) {
            throw new IllegalArgumentException(adapterDir + ": peft_type " + pc.peftType() + " is not PREFIX_TUNING"
                    + " (LoRA adapters load with PeftModel, PROMPT_TUNING with PromptTuning)");
        }
        ModelConfig c = model.config();
        check(cfg, model, adapterDir.toString());
        int cols = width(c);
        float[] emb = PromptEmbeddings.read(adapterDir, cfg.numVirtualTokens(), cols, cfg.numVirtualTokens() + " virtual tokens x "
                + c.numHiddenLayers() + " layers x 2 x " + c.numKeyValueHeads() + " kv heads x head_dim " + c.headDim()
                + (c.numKeyValueHeads() != c.numAttentionHeads() ? "; adapters made by peft before it sized prefixes by "
                + "num_key_value_heads do not fit grouped-query models" : ""));
        return of(cfg, emb, model);
    }

    /** From a config and host prompt_embeddings [P * L*2*KV*D] (row-major [P, L*2*KV*D]). */
    public static PrefixTuning of(PrefixTuningConfig config, float[] promptEmbeddings, TransformerLM model) {
        check(config, model, "prefix tuning config");
        ModelConfig c = model.config();
        int p = config.numVirtualTokens(), layers = c.numHiddenLayers(), row = width(c), kvd = c.numKeyValueHeads() * c.headDim();
        if (promptEmbeddings.length != (long) p * row) {
            throw new IllegalArgumentException("prompt_embeddings has " + promptEmbeddings.length + " values but " + p + " virtual tokens x "
                    + row + " (layers*2*kv_heads*head_dim) = " + (long) p * row + " are needed");
        }
        Backend b = model.backend();
        Tensor[] keys = new Tensor[layers], values = new Tensor[layers];
        try {
            for (int l = 0; l < layers; l++) {
                keys[l] = KvPrefix.upload(b, slice(promptEmbeddings, p, row, (l * 2) * kvd, kvd), p, kvd);
                values[l] = KvPrefix.upload(b, slice(promptEmbeddings, p, row, (l * 2 + 1) * kvd, kvd), p, kvd);
                // peft leaves them unrotated at positions 0.. while real tokens start at P; see the class comment
                model.rotateKeysInPlace(keys[l], -p);
            }
        } catch (RuntimeException e) {
            for (Tensor t : keys) if (t != null) t.close();
            for (Tensor t : values) if (t != null) t.close();
            throw e;
        }
        return new PrefixTuning(config, model, p, new KvPrefix(p, keys, values));
    }

    private static void check(PrefixTuningConfig cfg, TransformerLM model, String source) {
        ModelConfig c = model.config();
        if (cfg.numLayers() != null && cfg.numLayers() != c.numHiddenLayers()) {
            throw new IllegalArgumentException(source + ": num_layers " + cfg.numLayers() + " but the model has " + c.numHiddenLayers()
                    + " layers: the adapter was made for another base model");
        }
        if (cfg.numTransformerSubmodules() != null && cfg.numTransformerSubmodules() != 1) {
            throw new IllegalArgumentException(source + ": num_transformer_submodules " + cfg.numTransformerSubmodules()
                    + " (encoder-decoder prefixes) does not apply to a decoder-only model; use a CAUSAL_LM adapter");
        }
    }

    /** Columns of prompt_embeddings: layers * 2 * kvHeads * headDim. */
    private static int width(ModelConfig c) {
        return c.numHiddenLayers() * 2 * c.numKeyValueHeads() * c.headDim();
    }

    /** Columns [from, from+n) of every row of a row-major [rows, width] array. */
    private static float[] slice(float[] a, int rows, int width, int from, int n) {
        float[] out = new float[rows * n];
        for (int r = 0; r < rows; r++) System.arraycopy(a, r * width + from, out, r * n, n);
        return out;
    }

    /** Makes every cache the model creates from now on start with this prefix. Returns this. */
    public PrefixTuning attach() {
        model.setCachePrefix(this);
        return this;
    }

    /** Stops prefixing new caches (if this prefix is the one attached). */
    public void detach() {
        if (model.cachePrefix() == this) model.setCachePrefix(null);
    }

    public PrefixTuningConfig config() { return config; }

    /** Position of the first real token in peft's numbering (the number of virtual tokens). */
    public int positionStart() { return positionStart; }

    @Override public int length() { return prefix.length(); }

    /** Keys of one layer [P, kvHeads*headDim], already rotated by -P (see the class comment). */
    @Override public Tensor keys(int layer) { return prefix.keys(layer); }

    @Override public Tensor values(int layer) { return prefix.values(layer); }

    @Override
    public void close() {
        detach();
        prefix.close();
    }
}
