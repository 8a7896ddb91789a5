package dev.qlora4j.peft.prefix;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.model.ModelConfig;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.PeftKeys;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.PrefixTuningConfig;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * peft's PREFIX_TUNING adapter in training: the PrefixEncoder's parameters, and what one training
 * step needs from them (the per-layer keys/values as a {@link TransformerLM.TrainingPrefix}).
 *
 * <p>peft's PrefixEncoder: without prefix_projection, an embedding [P, L*2*KV*D] (nn.Embedding,
 * N(0, 1) init) that is the prefix table itself; with it, an embedding [P, token_dim] and
 * transform = Linear(token_dim, encoder_hidden_size), Tanh, Linear(encoder_hidden_size, L*2*KV*D)
 * (torch's default Linear init, U(+-1/sqrt(fan_in))). token_dim is hidden/heads*kv_heads = KV*D,
 * as peft's _prepare_prompt_learning_config sizes it for grouped-query attention. Column
 * ((l*2 + j)*KV + h)*D + d of the table is layer l's key (j = 0) or value (j = 1) of kv head h.
 * The saved {@code prompt_embeddings} is the table (the projected output, as peft's
 * get_prompt_embedding_to_save); the raw encoder weights go to {@value #ENCODER_FILE} as well when
 * the projection is used, so a checkpoint can resume (peft cannot rebuild them from the table).
 *
 * <p>Per step ({@link #beginStep}): the table is computed, split per layer, and the keys rotated
 * by -P (see {@link PrefixTuning}: real tokens keep positions from 0); the layers add the
 * gradients w.r.t. those keys/values into F32 accumulators; {@link #endStep} takes them back
 * through the rotation, the split and the encoder into the parameters' gradients.
 */
public final class TrainablePrefixTuning implements TransformerLM.TrainingPrefix, AutoCloseable {
    public static final String EMBEDDING = "prompt_encoder.default.embedding.weight";
    public static final String TRANSFORM = "prompt_encoder.default.transform.";
    /** Raw encoder parameters of a prefix_projection adapter (peft's in-memory names), for resuming. */
    public static final String ENCODER_FILE = "qlora4j_prefix_encoder.safetensors";

    private final PrefixTuningConfig config; // resolved for the model
    private final TransformerLM model;
    private final Backend b;
    private final int length, layers, kvWidth, width;
    private final PrefixParameter embedding; // [P, width], or [P, token_dim] with the projection
    private final PrefixParameter w0, b0, w2, b2; // transform.0 [enc, token_dim] + [enc], transform.2 [width, enc] + [width]; or null
    private final Tensor[] keyRows, valueRows; // per layer: I32 [kvWidth], the table columns of its keys / values

    // one step's state (beginStep .. endStep)
    private Tensor[] keys, values, keyGrads, valueGrads;
    private Tensor hidden;       // tanh(transform.0(embedding)) [P, enc] (projection), on the device
    private float[] hiddenHost;  // the same on the host, for tanh's backward
    private boolean training;

    private TrainablePrefixTuning(PrefixTuningConfig config, TransformerLM model, PrefixParameter embedding,
                                  PrefixParameter w0, PrefixParameter b0, PrefixParameter w2, PrefixParameter b2) {
        ModelConfig c = model.config();
        this.config = config;
        this.model = model;
        this.b = model.backend();
        this.length = config.numVirtualTokens();
        this.layers = c.numHiddenLayers();
        this.kvWidth = c.numKeyValueHeads() * c.headDim();
        this.width = layers * 2 * kvWidth;
        this.embedding = embedding;
        this.w0 = w0; this.b0 = b0; this.w2 = w2; this.b2 = b2;
        keyRows = new Tensor[layers];
        valueRows = new Tensor[layers];
        for (int l = 0; l < layers; l++) {
            keyRows[l] = b.upload(Tensor.ofInts(range((2 * l) * kvWidth, kvWidth), kvWidth));
            valueRows[l] = b.upload(Tensor.ofInts(range((2 * l + 1) * kvWidth, kvWidth), kvWidth));
        }
    }

    private static int[] range(int from, int n) {
        int[] r = new int[n];
        for (int i = 0; i < n; i++) r[i] = from + i;
        return r;
    }

    /**
     * peft's _prepare_prompt_learning_config for a decoder-only model: num_layers, token_dim and
     * num_attention_heads from the model, then (grouped-query attention) token_dim =
     * token_dim / num_attention_heads * num_key_value_heads and num_attention_heads = kv heads;
     * encoder_hidden_size defaults to token_dim. Fails when the result does not fit the model.
     */
    public static PrefixTuningConfig resolve(PrefixTuningConfig cfg, ModelConfig c) {
        if (cfg.numLayers() != null && cfg.numLayers() != c.numHiddenLayers()) {
            throw new IllegalArgumentException("prefix tuning config: num_layers " + cfg.numLayers() + " but the model has "
                    + c.numHiddenLayers() + " layers");
        }
        if (cfg.numTransformerSubmodules() != null && cfg.numTransformerSubmodules() != 1) {
            throw new IllegalArgumentException("prefix tuning config: num_transformer_submodules " + cfg.numTransformerSubmodules()
                    + " is for encoder-decoder models; a causal LM uses 1");
        }
        int heads = cfg.numAttentionHeads() != null ? cfg.numAttentionHeads() : c.numAttentionHeads();
        int dim = cfg.tokenDim() != null ? cfg.tokenDim() : c.hiddenSize();
        dim = dim / heads * c.numKeyValueHeads();
        int kvWidth = c.numKeyValueHeads() * c.headDim();
        if (dim != kvWidth) {
            throw new IllegalArgumentException("prefix tuning config: token_dim resolves to " + dim + " but this model's keys are "
                    + c.numKeyValueHeads() + " kv heads x head_dim " + c.headDim() + " = " + kvWidth
                    + " wide; leave token_dim and num_attention_heads unset");
        }
        return new PrefixTuningConfig(cfg.numVirtualTokens(), dim, 1, c.numKeyValueHeads(), c.numHiddenLayers(),
                cfg.encoderHiddenSize() != null ? cfg.encoderHiddenSize() : dim, cfg.prefixProjection(), cfg.modulesToSave(),
                cfg.taskType() == null ? "CAUSAL_LM" : cfg.taskType(), cfg.baseModelNameOrPath(), cfg.revision(), false, cfg.extra());
    }

    /** A new adapter with peft's initialization, drawn from {@code seed}. */
    public static TrainablePrefixTuning create(PrefixTuningConfig config, TransformerLM model, long seed) {
        PrefixTuningConfig cfg = resolve(config, model.config());
        Backend b = model.backend();
        SplittableRandom rng = new SplittableRandom(seed);
        int p = cfg.numVirtualTokens(), layers = model.config().numHiddenLayers();
        int width = layers * 2 * cfg.tokenDim();
        if (!cfg.prefixProjection()) {
            return new TrainablePrefixTuning(cfg, model, new PrefixParameter(EMBEDDING, b, normal(rng, p * width), p, width),
                    null, null, null, null);
        }
        int dim = cfg.tokenDim(), enc = cfg.encoderHiddenSize();
        return new TrainablePrefixTuning(cfg, model, new PrefixParameter(EMBEDDING, b, normal(rng, p * dim), p, dim),
                new PrefixParameter(TRANSFORM + "0.weight", b, uniform(rng, enc * dim, dim), enc, dim),
                new PrefixParameter(TRANSFORM + "0.bias", b, uniform(rng, enc, dim), enc),
                new PrefixParameter(TRANSFORM + "2.weight", b, uniform(rng, width * enc, enc), width, enc),
                new PrefixParameter(TRANSFORM + "2.bias", b, uniform(rng, width, enc), width));
    }

    /**
     * Continues training a saved PREFIX_TUNING adapter (--init-adapter). With the raw encoder file
     * of a prefix_projection adapter saved here, encoder and projection continue; otherwise the
     * saved table becomes the trained embedding (prefix_projection is then written as false: the
     * table is the parameter, as peft could not recover an MLP from it either).
     */
    public static TrainablePrefixTuning fromAdapter(Path dir, TransformerLM model) {
        PeftConfig pc = PeftConfigs.load(dir);
        if (!(pc instanceof PrefixTuningConfig saved)) {
            throw new IllegalArgumentException(dir + ": peft_type " + pc.peftType() + " is not PREFIX_TUNING; pass a prefix tuning adapter");
        }
        PrefixTuningConfig cfg = resolve(saved, model.config());
        if (cfg.prefixProjection() && Files.isRegularFile(dir.resolve(ENCODER_FILE))) {
            TrainablePrefixTuning t = create(cfg, model, 0);
            t.loadParameters(dir);
            return t;
        }
        PrefixTuningConfig plain = new PrefixTuningConfig(cfg.numVirtualTokens(), cfg.tokenDim(), cfg.numTransformerSubmodules(),
                cfg.numAttentionHeads(), cfg.numLayers(), cfg.encoderHiddenSize(), false, cfg.modulesToSave(), cfg.taskType(),
                cfg.baseModelNameOrPath(), cfg.revision(), false, cfg.extra());
        int p = plain.numVirtualTokens(), width = model.config().numHiddenLayers() * 2 * plain.tokenDim();
        float[] table = PromptEmbeddings.read(dir, p, width, p + " virtual tokens x layers*2*kv_heads*head_dim " + width);
        return new TrainablePrefixTuning(plain, model, new PrefixParameter(EMBEDDING, model.backend(), table, p, width),
                null, null, null, null);
    }

    private static float[] normal(SplittableRandom rng, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) rng.nextGaussian();
        return v;
    }

    /** torch.nn.Linear's default init of a weight or bias with fan_in inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
    private static float[] uniform(SplittableRandom rng, int n, int fanIn) {
        double bound = 1 / Math.sqrt(fanIn);
        float[] v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float) rng.nextDouble(-bound, bound);
        return v;
    }

    public PrefixTuningConfig config() { return config; }

    public boolean projection() { return w0 != null; }

    /** Makes the model's training and evaluation steps use this prefix. */
    public void attach() { model.setTrainingPrefix(this); }

    public void detach() { if (model.trainingPrefix() == this) model.setTrainingPrefix(null); }

    public List<Param> trainableParameters() {
        List<Param> out = new ArrayList<>();
        for (PrefixParameter p : parameters()) out.add(p.param());
        return out;
    }

    private List<PrefixParameter> parameters() {
        List<PrefixParameter> out = new ArrayList<>();
        out.add(embedding);
        if (projection()) out.addAll(List.of(w0, b0, w2, b2));
        return out;
    }

    public void zeroGrad() { parameters().forEach(PrefixParameter::zeroGrad); }

    // ---- one step ----

    /** Computes this step's per-layer keys and values (and gradient accumulators when training). */
    public void beginStep(boolean training) {
        endStepState();
        this.training = training;
        keys = new Tensor[layers];
        values = new Tensor[layers];
        try (Tensor table = table(training); Tensor columns = b.transpose(table)) { // [P, width] -> [width, P]
            for (int l = 0; l < layers; l++) {
                keys[l] = columnsToRows(columns, keyRows[l]);
                values[l] = columnsToRows(columns, valueRows[l]);
                model.rotateKeysInPlace(keys[l], -length); // real tokens keep positions from 0: see PrefixTuning
            }
        }
        if (training) {
            keyGrads = new Tensor[layers];
            valueGrads = new Tensor[layers];
            for (int l = 0; l < layers; l++) {
                keyGrads[l] = b.zeros(DType.F32, length, kvWidth);
                valueGrads[l] = b.zeros(DType.F32, length, kvWidth);
            }
        }
    }

    /** rows I32 [kvWidth] of columns [width, P] -> [P, kvWidth] in the activation dtype. */
    private Tensor columnsToRows(Tensor columns, Tensor rows) {
        try (Tensor picked = b.gatherRows(columns, rows)) {
            return b.transpose(picked);
        }
    }

    /**
     * The prefix table [P, width] (a new tensor): the embedding itself, or the encoder's output.
     * With keepHidden, the encoder's hidden activations stay for this step's backward.
     */
    private Tensor table(boolean keepHidden) {
        if (!projection()) return b.cast(embedding.value(), b.activationDType());
        float[] h;
        int[] shape;
        try (Tensor z = b.linear(embedding.value(), w0.value(), b0.value())) {
            h = b.toHost(z).toFloatArray();
            shape = z.shape();
        }
        for (int i = 0; i < h.length; i++) h[i] = (float) Math.tanh(h[i]);
        Tensor hid = b.upload(Tensor.of(h.clone(), shape));
        Tensor out;
        try {
            out = b.linear(hid, w2.value(), b2.value());
        } catch (RuntimeException e) {
            hid.close();
            throw e;
        }
        if (keepHidden) {
            hidden = hid;
            hiddenHost = h;
        } else {
            hid.close();
        }
        return out;
    }

    /**
     * Adds the step's key/value gradients into the parameters' gradients (when training) and frees
     * the step's tensors.
     */
    public void endStep() {
        if (training && keyGrads != null) backwardToParameters();
        endStepState();
    }

    /** Frees the step's tensors without touching the parameters' gradients (a failed step; no-op after endStep). */
    public void discardStep() { endStepState(); }

    private void backwardToParameters() {
        try (Tensor gColumns = b.zeros(DType.F32, width, length)) { // d loss / d table, transposed
            for (int l = 0; l < layers; l++) {
                Tensor gk = b.cast(keyGrads[l], b.activationDType());
                try {
                    model.rotateKeyGradientsInPlace(gk, -length);
                    scatterColumns(gk, keyRows[l], gColumns);
                } finally {
                    if (gk != keyGrads[l]) gk.close();
                }
                scatterColumns(valueGrads[l], valueRows[l], gColumns);
            }
            try (Tensor gTable = b.transpose(gColumns)) { // F32 [P, width]
                if (!projection()) {
                    b.axpyInPlace(embedding.gradForAccumulation(b), 1f, gTable);
                    return;
                }
                // table = hidden w2^T + b2, hidden = tanh(z), z = embedding w0^T + b0
                b.linearBackwardWeight(gTable, hidden, w2.gradForAccumulation(b));
                b.sumRowsInto(gTable, b2.gradForAccumulation(b));
                float[] gz;
                try (Tensor gh = b.linearBackwardInput(gTable, w2.value())) {
                    gz = b.toHost(gh).toFloatArray();
                }
                for (int i = 0; i < gz.length; i++) gz[i] *= 1 - hiddenHost[i] * hiddenHost[i];
                Tensor gzT = b.upload(Tensor.of(gz, length, hidden.dim(1)));
                try {
                    b.linearBackwardWeight(gzT, embedding.value(), w0.gradForAccumulation(b));
                    b.sumRowsInto(gzT, b0.gradForAccumulation(b));
                    try (Tensor gE = b.linearBackwardInput(gzT, w0.value())) {
                        b.axpyInPlace(embedding.gradForAccumulation(b), 1f, gE);
                    }
                } finally {
                    gzT.close();
                }
            }
        }
    }

    /** gColumns [width, P] rows at rows [kvWidth] += g [P, kvWidth] transposed (rows of one layer are distinct). */
    private void scatterColumns(Tensor g, Tensor rows, Tensor gColumns) {
        try (Tensor gt = b.transpose(g)) {
            b.embeddingBackward(rows, gt, gColumns);
        }
    }

    private void endStepState() {
        for (Tensor[] ts : new Tensor[][] {keys, values, keyGrads, valueGrads}) {
            if (ts != null) for (Tensor t : ts) if (t != null) t.close();
        }
        keys = values = keyGrads = valueGrads = null;
        if (hidden != null) hidden.close();
        hidden = null;
        hiddenHost = null;
    }

    // ---- TrainingPrefix ----

    @Override public int length() { return length; }

    @Override public Tensor keys(int layer) { return stepTensors(keys, "keys")[layer]; }

    @Override public Tensor values(int layer) { return stepTensors(values, "values")[layer]; }

    @Override public Tensor keyGradients(int layer) { return stepTensors(keyGrads, "key gradients")[layer]; }

    @Override public Tensor valueGradients(int layer) { return stepTensors(valueGrads, "value gradients")[layer]; }

    private static Tensor[] stepTensors(Tensor[] ts, String what) {
        if (ts == null) {
            throw new IllegalStateException("prefix " + what + " asked for outside a step: call beginStep(training) before the "
                    + "model's trainStep/evalStep (beginStep(true) for gradients) and endStep() after");
        }
        return ts;
    }

    // ---- files ----

    /** The table peft saves as prompt_embeddings, row-major [P, L*2*KV*D], on the host. */
    public float[] promptEmbeddings() {
        if (!projection()) return embedding.hostValues(b);
        try (Tensor t = table(false)) {
            return b.toHost(t).toFloatArray();
        }
    }

    /**
     * Writes the adapter as peft's save_pretrained does: adapter_model.safetensors with
     * prompt_embeddings (float32) and adapter_config.json (inference_mode true); with the
     * projection, also the raw encoder weights in {@value #ENCODER_FILE}.
     */
    public void save(Path dir, String baseModelNameOrPath) {
        try {
            Files.createDirectories(dir);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot create " + dir + ": " + e.getMessage(), e);
        }
        SafetensorsWriter.write(dir.resolve(PeftKeys.WEIGHTS_FILE),
                Map.of(PromptEmbeddings.KEY, Tensor.of(promptEmbeddings(), length, width)), Map.of("format", "pt"));
        if (projection()) {
            Map<String, Tensor> raw = new LinkedHashMap<>();
            for (PrefixParameter p : parameters()) raw.put(p.name(), Tensor.of(p.hostValues(b), p.shape()));
            SafetensorsWriter.write(dir.resolve(ENCODER_FILE), raw, Map.of("format", "pt"));
        }
        PeftConfigs.save(dir, config.withBaseModel(baseModelNameOrPath, config.revision()).withInferenceMode(true));
    }

    /** Loads parameters saved by {@link #save} into this adapter in place (resume_from_checkpoint). */
    public void loadParameters(Path dir) {
        if (!projection()) {
            embedding.setHostValues(b, PromptEmbeddings.read(dir, length, width, length + " virtual tokens x " + width));
            return;
        }
        Path file = dir.resolve(ENCODER_FILE);
        if (!Files.isRegularFile(file)) {
            throw new IllegalArgumentException(file + " is missing: a prefix_projection adapter's encoder weights are not in "
                    + PeftKeys.WEIGHTS_FILE + " (it holds only the projected table); resume from a checkpoint qlora4j wrote");
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            for (PrefixParameter p : parameters()) {
                if (!f.has(p.name())) throw new IllegalArgumentException(file + " has no tensor " + p.name());
                Tensor t = f.tensor(p.name());
                if (!java.util.Arrays.equals(t.shape(), p.shape())) {
                    throw new IllegalArgumentException(file + ": " + p.name() + " is " + java.util.Arrays.toString(t.shape())
                            + " but this adapter's is " + java.util.Arrays.toString(p.shape()) + " (another configuration)");
                }
                p.setHostValues(b, t.toFloatArray());
            }
        }
    }

    /** The adapter as inference runs it (a {@link PrefixTuning} over the current table; not attached). */
    public PrefixTuning toInference() {
        return PrefixTuning.of(config, promptEmbeddings(), model);
    }

    @Override
    public void close() {
        detach();
        endStepState();
        for (PrefixParameter p : parameters()) p.close();
        for (Tensor t : keyRows) t.close();
        for (Tensor t : valueRows) t.close();
    }
}
