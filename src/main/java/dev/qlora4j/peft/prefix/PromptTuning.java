package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.KvCache;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

/**
 * A peft PROMPT_TUNING adapter at inference: {@code prompt_embeddings} [V, hidden] are input
 * embeddings put before the token embeddings of every sequence,
 * {@code inputs_embeds = concat(prompt_embeddings, embed_tokens(ids))}, positions 0 .. V+T-1,
 * causal attention; the model returns V+T rows, the first V belonging to the virtual tokens.
 *
 * <p>{@link #forward} and {@link #logits} compute exactly that. For generation, {@link #attach()}
 * runs the V virtual tokens once and hands their per-layer keys/values to the model as a cache
 * prefix (the virtual tokens come first, so under causal attention nothing after them changes
 * them): generation, CausalLM.logits and LossEvaluator then see T rows of real tokens that are the
 * last T rows of the full computation. The virtual tokens are run at positions -V .. -1 so that the
 * real tokens keep positions 0 .. T-1 (rope only sees differences), with the limits of
 * {@link TransformerLM#setCachePrefix}.
 */
public final class PromptTuning implements AutoCloseable {
    private final PromptTuningConfig config;
    private final TransformerLM model;
    private final int numVirtualTokens;
    private final Tensor embeddings; // [V, hidden] in the activation dtype, on the device
    private KvPrefix prefix;         // made by attach()

    private PromptTuning(PromptTuningConfig config, TransformerLM model, Tensor embeddings) {
        this.config = config;
        this.model = model;
        this.numVirtualTokens = config.numVirtualTokens();
        this.embeddings = embeddings;
    }

    /** Loads adapter_config.json (peft_type PROMPT_TUNING) and prompt_embeddings from an adapter folder. */
    public static PromptTuning load(Path adapterDir, TransformerLM model) {
        PeftConfig pc = PeftConfigs.load(adapterDir);
        if (!(pc instanceof PromptTuningConfig cfg)) {
            throw new IllegalArgumentException(adapterDir + ": peft_type " + pc.peftType() + " is not PROMPT_TUNING"
                    + " (LoRA adapters load with PeftModel, PREFIX_TUNING with PrefixTuning)");
        }
        check(cfg, model, adapterDir.toString());
        int hidden = model.config().hiddenSize();
        float[] emb = PromptEmbeddings.read(adapterDir, cfg.numVirtualTokens(), hidden,
                cfg.numVirtualTokens() + " virtual tokens x hidden_size " + hidden);
        return of(cfg, emb, model);
    }

    /** From a config and host prompt_embeddings, row-major [V, hidden]. */
    public static PromptTuning of(PromptTuningConfig config, float[] promptEmbeddings, TransformerLM model) {
        check(config, model, "prompt tuning config");
        int v = config.numVirtualTokens(), hidden = model.config().hiddenSize();
        if (promptEmbeddings.length != (long) v * hidden) {
            throw new IllegalArgumentException("prompt_embeddings has " + promptEmbeddings.length + " values but " + v
                    + " virtual tokens x hidden_size " + hidden + " = " + (long) v * hidden + " are needed");
        }
        return new PromptTuning(config, model, KvPrefix.upload(model.backend(), promptEmbeddings.clone(), v, hidden));
    }

    private static void check(PromptTuningConfig cfg, TransformerLM model, String source) {
        ModelConfig c = model.config();
        if (cfg.tokenDim() != null && cfg.tokenDim() != c.hiddenSize()) {
            throw new IllegalArgumentException(source + ": token_dim " + cfg.tokenDim() + " but the model's hidden_size is " + c.hiddenSize()
                    + ": the adapter was made for another base model");
        }
        if (cfg.numTransformerSubmodules() != null && cfg.numTransformerSubmodules() != 1) {
            throw new IllegalArgumentException(source + ": num_transformer_submodules " + cfg.numTransformerSubmodules()
                    + " (encoder-decoder prompts) does not apply to a decoder-only model; use a CAUSAL_LM adapter");
        }
    }

    public PromptTuningConfig config() { return config; }

    public int numVirtualTokens() { return numVirtualTokens; }

    /** The virtual token embeddings [V, hidden] on the device. */
    public Tensor embeddings() { return embeddings; }

    /**
     * Final hidden states [B*(V+T), hidden] of B rows of T token ids each (no padding: rows of one
     * length), row b's V virtual tokens first. Ignores a cache prefix attached to the model.
     */
    public Tensor forward(int[][] ids) {
        int batch = ids.length;
        if (batch == 0) throw new IllegalArgumentException("no sequences given");
        int t = ids[0].length;
        for (int[] r : ids) {
            if (r.length != t || t == 0) {
                throw new IllegalArgumentException("prompt tuning forward takes non-empty rows of one length (no padding); got lengths "
                        + Arrays.toString(Arrays.stream(ids).mapToInt(a -> a.length).toArray()));
            }
        }
        int v = numVirtualTokens, len = v + t, n = batch * t;
        Backend b = model.backend();
        ModelConfig c = model.config();
        int[] flatIds = new int[n];
        for (int r = 0; r < batch; r++) System.arraycopy(ids[r], 0, flatIds, r * t, t);
        // table = [virtual (V rows); token embeddings (B*T rows)]; each output row picks its source row
        int[] order = new int[batch * len], positions = new int[batch * len];
        for (int r = 0; r < batch; r++) {
            for (int i = 0; i < len; i++) {
                order[r * len + i] = i < v ? i : v + r * t + (i - v);
                positions[r * len + i] = i;
            }
        }
        try (Tensor idT = b.upload(Tensor.ofInts(flatIds, n));
             Tensor tokens = b.embedding(idT, model.embedTokens());
             Tensor table = b.concatRows(List.of(embeddings, tokens));
             Tensor orderT = b.upload(Tensor.ofInts(order, order.length));
             Tensor x = b.gatherRows(table, orderT);
             Tensor posT = b.upload(Tensor.ofInts(positions, positions.length));
             Tensor pads = b.upload(Tensor.ofInts(new int[batch], batch));
             KvCache cache = b.newKvCache(c.numHiddenLayers(), batch, c.numKeyValueHeads(), len, c.headDim())) {
            return model.forwardEmbeddings(x, posT, cache, 0, pads);
        }
    }

    /** Logits [V+T][vocab] of one sequence, as peft returns them (the first V rows belong to the virtual tokens). */
    public float[][] logits(int[] ids) {
        Backend b = model.backend();
        try (Tensor hidden = forward(new int[][] {ids}); Tensor logits = model.logits(hidden)) {
            float[] flat = b.toHost(logits).toFloatArray();
            int rows = logits.dim(0), vocab = logits.dim(1);
            float[][] out = new float[rows][];
            for (int i = 0; i < rows; i++) out[i] = Arrays.copyOfRange(flat, i * vocab, (i + 1) * vocab);
            return out;
        }
    }

    /**
     * Runs the virtual tokens (positions -V .. -1) and makes their keys/values the model's cache
     * prefix, so that generation and the cache-based forward see the prompt. Returns this.
     */
    public PromptTuning attach() {
        if (prefix == null) prefix = virtualKeysAndValues();
        model.setCachePrefix(prefix);
        return this;
    }

    /** Stops prefixing new caches (if this adapter's prefix is the one attached). */
    public void detach() {
        if (prefix != null && model.cachePrefix() == prefix) model.setCachePrefix(null);
    }

    private KvPrefix virtualKeysAndValues() {
        Backend b = model.backend();
        ModelConfig c = model.config();
        int v = numVirtualTokens;
        int[] positions = new int[v];
        for (int i = 0; i < v; i++) positions[i] = i - v;
        try (Tensor posT = b.upload(Tensor.ofInts(positions, v));
             Tensor pads = b.upload(Tensor.ofInts(new int[1], 1));
             KvCache cache = b.newKvCache(c.numHiddenLayers(), 1, c.numKeyValueHeads(), v, c.headDim());
             Tensor hidden = model.forwardEmbeddings(embeddings, posT, cache, 0, pads)) {
            return KvPrefix.fromCache(b, cache, v);
        }
    }

    @Override
    public void close() {
        detach();
        if (prefix != null) prefix.close();
        embeddings.close();
    }
}
