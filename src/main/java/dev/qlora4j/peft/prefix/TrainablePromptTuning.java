package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.io.tokenizer.Tokenizer;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TokenEmbedding;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftKeys;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PromptTuningConfig;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * peft's PROMPT_TUNING adapter in training: V learned input embeddings (peft's PromptEmbedding,
 * parameter "prompt_encoder.default.embedding.weight" [V, hidden], float32) that come before the
 * token embeddings of every example.
 *
 * <p>The training rows carry the virtual tokens as ids {@link #virtualId}(i) = -(i+1) (see
 * {@link dev.qlora4j.train.VirtualTokenBatches}); while attached, this object is the model's embedding
 * ({@link TransformerLM#setEmbeddingProvider}): negative ids take rows of the learned table,
 * others the frozen token embedding, and the backward sends the gradient rows of the virtual ids
 * into the table's gradient.
 *
 * <p>Initialization as peft's: RANDOM keeps nn.Embedding's N(0, 1); TEXT tokenizes
 * prompt_tuning_init_text with special tokens (tokenizer(text)), cuts or repeats the ids to V,
 * and copies those rows of the model's embedding table.
 */
public final class TrainablePromptTuning implements TokenEmbedding, AutoCloseable {
    public static final String EMBEDDING = "prompt_encoder.default.embedding.weight";

    private final PromptTuningConfig config; // resolved for the model
    private final TransformerLM model;
    private final Backend b;
    private final int numVirtualTokens, hidden;
    private final PrefixParameter embedding; // [V, hidden]

    private TrainablePromptTuning(PromptTuningConfig config, TransformerLM model, float[] init) {
        ModelConfig c = model.config();
        this.config = config;
        this.model = model;
        this.b = model.backend();
        this.numVirtualTokens = config.numVirtualTokens();
        this.hidden = c.hiddenSize();
        this.embedding = new PrefixParameter(EMBEDDING, b, init, numVirtualTokens, hidden);
    }

    /** The id a training row uses for virtual token i (0 <= i < V): -(i+1), never a vocabulary id. */
    public static int virtualId(int i) { return -(i + 1); }

    /** peft's _prepare_prompt_learning_config for a causal LM: model dimensions filled in, one submodule. */
    public static PromptTuningConfig resolve(PromptTuningConfig cfg, ModelConfig c) {
        if (cfg.tokenDim() != null && cfg.tokenDim() != c.hiddenSize()) {
            throw new IllegalArgumentException("prompt tuning config: token_dim " + cfg.tokenDim() + " but the model's hidden_size is "
                    + c.hiddenSize());
        }
        if (cfg.numTransformerSubmodules() != null && cfg.numTransformerSubmodules() != 1) {
            throw new IllegalArgumentException("prompt tuning config: num_transformer_submodules " + cfg.numTransformerSubmodules()
                    + " is for encoder-decoder models; a causal LM uses 1");
        }
        return cfg.resolve(c.numHiddenLayers(), c.hiddenSize(), c.numAttentionHeads()).withInferenceMode(false);
    }

    /**
     * A new adapter initialized as the config says (TEXT needs the tokenizer; SAMPLE_VOCAB draws
     * vocabulary rows from seed, as peft's RANDOM_DISCRETE does from numpy's generator).
     */
    public static TrainablePromptTuning create(PromptTuningConfig config, TransformerLM model, Tokenizer tokenizer, long seed) {
        PromptTuningConfig cfg = resolve(config, model.config());
        int v = cfg.numVirtualTokens(), h = model.config().hiddenSize();
        SplittableRandom rng = new SplittableRandom(seed);
        float[] init = switch (cfg.promptTuningInit()) {
            case RANDOM -> {
                float[] x = new float[v * h];
                for (int i = 0; i < x.length; i++) x[i] = (float) rng.nextGaussian();
                yield x;
            }
            case TEXT -> {
                if (tokenizer == null) throw new IllegalArgumentException("prompt_tuning_init TEXT needs the model's tokenizer");
                int[] ids = tokenizer.encode(cfg.promptTuningInitText(), true);
                if (ids.length == 0) {
                    throw new IllegalArgumentException("prompt_tuning_init_text \"" + cfg.promptTuningInitText()
                            + "\" gives no tokens; give some text, or use RANDOM init");
                }
                yield embeddingRows(model, textIds(ids, v));
            }
            case SAMPLE_VOCAB -> {
                int[] ids = new int[v];
                for (int i = 0; i < v; i++) ids[i] = rng.nextInt(model.config().vocabSize());
                yield embeddingRows(model, ids);
            }
        };
        return new TrainablePromptTuning(cfg, model, init);
    }

    /** peft's TEXT init ids: the first V, or the ids repeated until V. */
    static int[] textIds(int[] ids, int v) {
        int[] out = new int[v];
        for (int i = 0; i < v; i++) out[i] = ids[i % ids.length];
        return out;
    }

    /** Rows of the model's embedding table as float32, row-major [ids.length, hidden]. */
    private static float[] embeddingRows(TransformerLM model, int[] ids) {
        Backend b = model.backend();
        try (Tensor idT = b.upload(Tensor.ofInts(ids, ids.length)); Tensor rows = b.embedding(idT, model.embedTokens())) {
            return b.toHost(rows).toFloatArray();
        }
    }

    /** Continues training a saved PROMPT_TUNING adapter (--init-adapter). */
    public static TrainablePromptTuning fromAdapter(Path dir, TransformerLM model) {
        PeftConfig pc = PeftConfigs.load(dir);
        if (!(pc instanceof PromptTuningConfig saved)) {
            throw new IllegalArgumentException(dir + ": peft_type " + pc.peftType() + " is not PROMPT_TUNING; pass a prompt tuning adapter");
        }
        PromptTuningConfig cfg = resolve(saved, model.config());
        int v = cfg.numVirtualTokens(), h = model.config().hiddenSize();
        return new TrainablePromptTuning(cfg, model, PromptEmbeddings.read(dir, v, h, v + " virtual tokens x hidden_size " + h));
    }

    public PromptTuningConfig config() { return config; }

    public int numVirtualTokens() { return numVirtualTokens; }

    /** Makes the model embed through this object (virtual ids included) in its training and evaluation steps. */
    public void attach() { model.setEmbeddingProvider(() -> this); }

    /** Gives the model its own embedding back. */
    public void detach() { model.setEmbeddingProvider(null); }

    public List<Param> trainableParameters() { return List.of(embedding.param()); }

    public void zeroGrad() { embedding.zeroGrad(); }

    /** The virtual token embeddings, row-major [V, hidden], on the host. */
    public float[] promptEmbeddings() { return embedding.hostValues(b); }

    // ---- TokenEmbedding ----

    /** ids I32 [n] (virtual ids negative) -> [n, hidden]: [learned rows; token embeddings] gathered in order. */
    @Override
    public Tensor forward(Backend backend, Tensor ids) {
        int[] host = backend.toHost(ids).toIntArray();
        int n = host.length;
        int[] tokenIds = new int[n], order = new int[n];
        for (int i = 0; i < n; i++) {
            int id = host[i];
            if (id < 0) {
                int v = -id - 1;
                if (v >= numVirtualTokens) {
                    throw new IllegalArgumentException("virtual token id " + id + " but the prompt has " + numVirtualTokens + " virtual tokens");
                }
                order[i] = v;
            } else {
                tokenIds[i] = id;
                order[i] = numVirtualTokens + i;
            }
        }
        Tensor learned = backend.cast(embedding.value(), backend.activationDType());
        try (Tensor tokT = backend.upload(Tensor.ofInts(tokenIds, n));
             Tensor tokens = backend.embedding(tokT, model.embedTokens());
             Tensor table = backend.concatRows(List.of(learned, tokens));
             Tensor orderT = backend.upload(Tensor.ofInts(order, n))) {
            return backend.gatherRows(table, orderT);
        } finally {
            if (learned != embedding.value()) learned.close();
        }
    }

    /** Adds the gradient rows of the virtual ids into the learned table's gradient (the token table is frozen). */
    @Override
    public void backward(Backend backend, Tensor ids, Tensor gradOut) {
        int[] host = backend.toHost(ids).toIntArray();
        List<Integer> rows = new ArrayList<>(), slots = new ArrayList<>();
        for (int i = 0; i < host.length; i++) {
            if (host[i] < 0) {
                rows.add(i);
                slots.add(-host[i] - 1);
            }
        }
        if (rows.isEmpty()) return;
        int m = rows.size();
        try (Tensor rowT = backend.upload(Tensor.ofInts(rows.stream().mapToInt(Integer::intValue).toArray(), m));
             Tensor slotT = backend.upload(Tensor.ofInts(slots.stream().mapToInt(Integer::intValue).toArray(), m));
             Tensor g = backend.gatherRows(gradOut, rowT)) {
            backend.embeddingBackward(slotT, g, embedding.gradForAccumulation(backend));
        }
    }

    // ---- files ----

    /** Writes adapter_model.safetensors (prompt_embeddings float32 [V, hidden]) and adapter_config.json, as peft does. */
    public void save(Path dir, String baseModelNameOrPath) {
        try {
            Files.createDirectories(dir);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot create " + dir + ": " + e.getMessage(), e);
        }
        SafetensorsWriter.write(dir.resolve(PeftKeys.WEIGHTS_FILE),
                Map.of(PromptEmbeddings.KEY, Tensor.of(promptEmbeddings(), numVirtualTokens, hidden)), Map.of("format", "pt"));
        PeftConfigs.save(dir, config.withBaseModel(baseModelNameOrPath, config.revision()).withInferenceMode(true));
    }

    /** Loads prompt_embeddings saved by {@link #save} into this adapter in place (resume_from_checkpoint). */
    public void loadParameters(Path dir) {
        embedding.setHostValues(b, PromptEmbeddings.read(dir, numVirtualTokens, hidden,
                numVirtualTokens + " virtual tokens x hidden_size " + hidden));
    }

    /** The adapter as inference runs it (a {@link PromptTuning} over the current embeddings; not attached). */
    public PromptTuning toInference() {
        return PromptTuning.of(config, promptEmbeddings(), model);
    }

    @Override
    public void close() {
        if (model != null) detach();
        embedding.close();
    }
}
