package dev.qlora4j.peft;

import dev.qlora4j.CausalLM;
import dev.qlora4j.backend.Backend;
import dev.qlora4j.io.SafetensorsFile;
import dev.qlora4j.io.SafetensorsWriter;
import dev.qlora4j.model.TransformerLM;
import dev.qlora4j.nn.DenseLinear;
import dev.qlora4j.nn.Linear;
import dev.qlora4j.nn.QuantizedLinear;
import dev.qlora4j.optim.Param;
import dev.qlora4j.peft.config.LoraBias;
import dev.qlora4j.peft.config.LoraConfig;
import dev.qlora4j.peft.config.ModuleSelector;
import dev.qlora4j.peft.config.PeftConfig;
import dev.qlora4j.peft.config.PeftConfigs;
import dev.qlora4j.peft.config.TargetModules;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Pattern;

/**
 * A model with LoRA adapters, the counterpart of peft's PeftModel around a LoraModel:
 *
 * <pre>{@code
 * try (PeftModel peft = PeftModel.wrap(lm, LoraConfig.of(16, 32, "q_proj", "v_proj"))) {
 *     peft.train(true);
 *     List<Param> params = peft.trainableParameters();  // lora_A / lora_B of the active adapter
 *     ... forward/backward through lm.model(), optimizer over params ...
 *     peft.save(Path.of("out/adapter"));                // adapter_config.json + adapter_model.safetensors
 * }
 * }</pre>
 *
 * Wrapping replaces each targeted linear layer of the model by a {@link LoraLinear} around it
 * (the base weights are never modified) and lm_head, when in modules_to_save, by a
 * {@link ModulesToSaveLinear}, and embed_tokens by a trainable copy the model asks for at every
 * step ({@link #embeddingOverride()}); the model's own forward then runs the adapters.
 *
 * <p>Files are peft's: {@link #save} writes what peft's save_pretrained writes and
 * {@link #loadAdapter} reads what it writes (key names in {@link PeftKeys}).
 */
public final class PeftModel implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(PeftModel.class.getName());
    public static final String DEFAULT_ADAPTER = "default";

    private final CausalLM causalLM;        // null when built on a bare TransformerLM
    private final TransformerLM model;
    private final Backend backend;
    private final String baseModelNameOrPath;
    private final long seed;
    private final boolean tied;             // lm_head shares the embedding table
    private final Map<String, LoraConfig> configs = new LinkedHashMap<>();
    private final Set<String> frozen = new HashSet<>();            // adapters loaded with isTrainable=false
    private final Map<String, LoraLinear> loraLayers = new LinkedHashMap<>();   // module path -> layer
    private ModulesToSaveLinear lmHeadCopies;                      // lm_head in modules_to_save, or null
    private final Map<String, TrainableEmbedding> embedCopies = new LinkedHashMap<>();
    private List<String> active = new ArrayList<>();
    private boolean disabled;
    private boolean training;
    private boolean unloaded;

    private PeftModel(CausalLM causalLM, TransformerLM model, String baseModelNameOrPath, long seed) {
        this.causalLM = causalLM;
        this.model = model;
        this.backend = model.backend();
        this.baseModelNameOrPath = baseModelNameOrPath;
        this.seed = seed;
        this.tied = model.linear(PeftKeys.LM_HEAD) instanceof DenseLinear d && d.weight() == model.embedTokens();
        model.setEmbeddingProvider(this::embeddingOverride); // embed_tokens in modules_to_save
    }

    // ---- construction ----

    /** get_peft_model(base, cfg) with adapter "default" and seed 0. */
    public static PeftModel wrap(CausalLM base, LoraConfig cfg) {
        return wrap(base, cfg, DEFAULT_ADAPTER, 0);
    }

    /**
     * peft's get_peft_model: freezes the base (it is never trained here anyway), wraps the modules
     * target_modules selects with a freshly initialized adapter {@code adapterName} (random
     * numbers from {@code seed}), and activates it. Closing the PeftModel closes {@code base}.
     */
    public static PeftModel wrap(CausalLM base, LoraConfig cfg, String adapterName, long seed) {
        PeftModel p = new PeftModel(base, base.model(), base.dir().toString(), seed);
        p.addAdapter(adapterName, cfg);
        p.setAdapter(adapterName);
        return p;
    }

    /** The same on a bare model (closing the PeftModel closes the model). */
    public static PeftModel wrap(TransformerLM model, String baseModelNameOrPath, LoraConfig cfg, String adapterName, long seed) {
        PeftModel p = new PeftModel(null, model, baseModelNameOrPath, seed);
        p.addAdapter(adapterName, cfg);
        p.setAdapter(adapterName);
        return p;
    }

    /**
     * peft's PeftModel.from_pretrained(base, adapterDir, adapter_name=name, is_trainable=...):
     * loads adapter_config.json and adapter_model.safetensors from {@code adapterDir} and
     * activates the adapter. Not trainable adapters contribute no {@link #trainableParameters()}.
     */
    public static PeftModel fromPretrained(CausalLM base, Path adapterDir, String name, boolean isTrainable) {
        PeftModel p = new PeftModel(base, base.model(), base.dir().toString(), 0);
        try {
            p.loadAdapter(adapterDir, name, isTrainable);
        } catch (RuntimeException e) {
            p.detachAll();
            throw e;
        }
        p.setAdapter(name);
        return p;
    }

    public TransformerLM model() { checkLoaded(); return model; }

    /** The wrapped CausalLM facade (its model now runs the adapters), or null when built on a bare model. */
    public CausalLM causalLM() { return causalLM; }

    public Backend backend() { return backend; }

    /**
     * The backend a module's adapter lives on: its layer's device on a model split over several devices (adapter
     * weights and their gradients stay beside the layer they adapt), the model's backend otherwise.
     */
    private Backend on(String modulePath) { return model.backendFor(modulePath); }

    public LoraConfig config(String adapter) {
        LoraConfig c = configs.get(adapter);
        if (c == null) throw new IllegalArgumentException("Adapter " + adapter + " does not exist; adapters: " + configs.keySet());
        return c;
    }

    /** Adapter names in the order they were added (peft_config's keys). */
    public List<String> adapterNames() { return List.copyOf(configs.keySet()); }

    public List<String> activeAdapters() { return List.copyOf(active); }

    /** The LoRA layers by module path ("model.layers.0.self_attn.q_proj" ...). */
    public Map<String, LoraLinear> loraLayers() { return java.util.Collections.unmodifiableMap(loraLayers); }

    // ---- adapters ----

    /** peft's add_adapter: a new, freshly initialized adapter; it is not activated (call {@link #setAdapter}). */
    public void addAdapter(String name, LoraConfig cfg) {
        checkLoaded();
        LoraConfig c = prepare(name, cfg);
        long s = Seeds.derive(seed, "init", name);
        injectAdapter(name, c, (lora, path) -> lora.addAdapter(on(path), name, c.rank(path), c.alpha(path), c.scaling(path),
                c.loraDropout(), c.useDora(), c.initLoraWeights(), Seeds.derive(s, path)));
        addModulesToSaveCopies(name, c, null);
        configs.put(name, c);
    }

    /** Validates a config against what this engine implements and fills target_modules as peft does. */
    private LoraConfig prepare(String name, LoraConfig cfg) {
        if (configs.containsKey(name)) throw new IllegalArgumentException("an adapter named '" + name + "' already exists; pick another name or delete it first");
        if (name.isEmpty() || name.contains(".")) throw new IllegalArgumentException("adapter names must be non-empty and without dots, got '" + name + "'");
        List<String> unsupported = cfg.unsupportedSettings();
        if (!unsupported.isEmpty()) {
            throw new IllegalArgumentException("adapter '" + name + "': settings not supported by qlora4j: " + unsupported
                    + "; remove them from the LoRA config");
        }
        if (cfg.bias() != LoraBias.NONE) {
            throw new IllegalArgumentException("adapter '" + name + "': bias=\"" + cfg.bias().json() + "\" (training the base biases) is not "
                    + "supported; use bias=\"none\"");
        }
        LoraConfig c = cfg;
        if (c.fanInFanOut()) {
            LOG.log(System.Logger.Level.WARNING, "fan_in_fan_out is set to True but the target modules are plain linear layers "
                    + "[out, in]; setting fan_in_fan_out to False (as peft does)");
            c = c.toBuilder().fanInFanOut(false).build();
        }
        c = TargetModules.resolve(c, model.config().modelType());
        if (c.targetModules() instanceof ModuleSelector.AllLinear) {
            // peft replaces "all-linear" by the names of the linear modules it found (all but the output head)
            Set<String> names = new LinkedHashSet<>();
            for (String p : model.linearPaths()) if (!p.equals(PeftKeys.LM_HEAD)) names.add(p.substring(p.lastIndexOf('.') + 1));
            c = c.toBuilder().targetModules(new ModuleSelector.Names(List.copyOf(names))).build();
        }
        return c;
    }

    @FunctionalInterface
    private interface AdapterFactory {
        void create(LoraLinear layer, String path);
    }

    /** Wraps (or reuses the wrapper of) every module the config targets and lets the factory add the adapter. */
    private void injectAdapter(String name, LoraConfig c, AdapterFactory factory) {
        List<String> targets = TargetModules.select(c, model.linearPaths()).targeted();
        List<LoraLinear> touched = new ArrayList<>();
        try {
            for (String path : targets) {
                LoraLinear layer = loraLayers.get(path);
                if (layer == null) {
                    Linear current = model.linear(path);
                    if (current instanceof ModulesToSaveLinear) {
                        throw new IllegalArgumentException(path + " is in modules_to_save of another adapter and cannot also carry LoRA");
                    }
                    layer = new LoraLinear(path, current, path.equals(PeftKeys.LM_HEAD) && tied);
                    layer.setActiveAdapters(active);
                    layer.setDisabled(disabled);
                    layer.setTraining(training);
                    model.setLinear(path, layer);
                    loraLayers.put(path, layer);
                }
                factory.create(layer, path);
                touched.add(layer);
            }
        } catch (RuntimeException e) {
            for (LoraLinear l : touched) if (l.hasAdapter(name)) l.deleteAdapter(on(l.path()), name);
            throw e;
        }
    }

    /**
     * Creates the modules_to_save copies of adapter {@code name}: lm_head and/or embed_tokens,
     * from the original module, or from {@code saved} tensors (file keys) when loading.
     */
    private void addModulesToSaveCopies(String name, LoraConfig c, Map<String, float[]> saved) {
        if (c.modulesToSave() == null) return;
        for (String m : c.modulesToSave()) {
            if (PeftKeys.LM_HEAD.endsWith(m)) {
                if (lmHeadCopies == null) {
                    Linear original = model.linear(PeftKeys.LM_HEAD);
                    if (original instanceof LoraLinear) {
                        throw new IllegalArgumentException("lm_head carries LoRA and cannot also be in modules_to_save");
                    }
                    lmHeadCopies = new ModulesToSaveLinear(PeftKeys.LM_HEAD, original, tied);
                    lmHeadCopies.setActive(active.isEmpty() ? null : active.getFirst());
                    lmHeadCopies.setDisabled(disabled);
                    model.setLinear(PeftKeys.LM_HEAD, lmHeadCopies);
                }
                Linear original = lmHeadCopies.original();
                int out = original.outFeatures(), in = original.inFeatures();
                float[] w = saved != null ? saved.get(PeftKeys.savedModule(PeftKeys.LM_HEAD, "weight")) : hostWeight(original);
                float[] bias = saved != null ? saved.get(PeftKeys.savedModule(PeftKeys.LM_HEAD, "bias")) : hostBias(original);
                lmHeadCopies.put(name, TrainableDense.copyOf(on(PeftKeys.LM_HEAD), PeftKeys.modulesToSavePrefix(PeftKeys.LM_HEAD, name), w, out, in, bias));
            } else if (PeftKeys.EMBED_TOKENS.endsWith(m)) {
                Tensor table = model.embedTokens();
                float[] w = saved != null ? saved.get(PeftKeys.savedModule(PeftKeys.EMBED_TOKENS, "weight")) : on(PeftKeys.EMBED_TOKENS).toHost(table).toFloatArray();
                TrainableEmbedding old = embedCopies.put(name, new TrainableEmbedding(
                        PeftKeys.modulesToSavePrefix(PeftKeys.EMBED_TOKENS, name) + "weight", TrainableTensor.of(on(PeftKeys.EMBED_TOKENS), w, table.shape())));
                if (old != null) old.close();
            } else {
                throw new IllegalArgumentException("modules_to_save entry '" + m + "' is not supported by qlora4j: only lm_head and "
                        + "embed_tokens can be trained in full; train other modules with LoRA (target_modules)");
            }
        }
    }

    /** The weight of lm_head (the only layer copied for modules_to_save) on the host. */
    private float[] hostWeight(Linear l) {
        Backend backend = on(PeftKeys.LM_HEAD);
        return switch (l) {
            case DenseLinear d -> backend.toHost(d.weight()).toFloatArray();
            case QuantizedLinear q -> {
                try (Tensor w = backend.dequantize(q.weight(), DType.F32)) {
                    yield backend.toHost(w).toFloatArray();
                }
            }
            default -> throw new IllegalArgumentException("cannot copy a " + l.getClass().getSimpleName() + " for modules_to_save");
        };
    }

    private float[] hostBias(Linear l) {
        Backend backend = on(PeftKeys.LM_HEAD);
        Tensor b = switch (l) {
            case DenseLinear d -> d.bias();
            case QuantizedLinear q -> q.bias();
            default -> null;
        };
        return b == null ? null : backend.toHost(b).toFloatArray();
    }

    /** peft's set_adapter: makes one adapter active (and trainable, unless loaded for inference). */
    public void setAdapter(String name) { setAdapters(List.of(name)); }

    /** Several active adapters: their outputs add up (in this order; DoRA adapters see the running sum). */
    public void setAdapters(List<String> names) {
        checkLoaded();
        for (String n : names) config(n);
        if (names.size() > 1 && (lmHeadCopies != null || !embedCopies.isEmpty())) {
            for (String n : names) {
                if (configs.get(n).modulesToSave() != null) {
                    throw new IllegalArgumentException("Attempted to set multiple (" + names + ") adapters at once for modules_to_save");
                }
            }
        }
        active = new ArrayList<>(new LinkedHashSet<>(names));
        for (LoraLinear l : loraLayers.values()) l.setActiveAdapters(active);
        if (lmHeadCopies != null) lmHeadCopies.setActive(active.isEmpty() ? null : active.getFirst());
    }

    /** Base-only forward and backward until {@link #enableAdapters()} (merged adapters are unmerged first, as in peft). */
    public void disableAdapters() { setDisabled(true); }

    public void enableAdapters() { setDisabled(false); }

    /** try (var off = peft.disabledAdapters()) { base-only forward } : peft's disable_adapter() context manager. */
    public Scope disabledAdapters() {
        boolean was = disabled;
        setDisabled(true);
        return () -> setDisabled(was);
    }

    /** A try-with-resources scope whose close() throws nothing. */
    public interface Scope extends AutoCloseable {
        @Override void close();
    }

    private void setDisabled(boolean d) {
        checkLoaded();
        disabled = d;
        for (LoraLinear l : loraLayers.values()) {
            if (d && l.merged()) l.unmerge(on(l.path()));
            l.setDisabled(d);
        }
        if (lmHeadCopies != null) lmHeadCopies.setDisabled(d);
    }

    public boolean adaptersDisabled() { return disabled; }

    /** peft's delete_adapter; when it was active, the next remaining adapter becomes active (as peft does). */
    public void deleteAdapter(String name) {
        config(name);
        configs.remove(name);
        frozen.remove(name);
        for (LoraLinear l : loraLayers.values()) if (l.hasAdapter(name)) l.deleteAdapter(on(l.path()), name);
        if (lmHeadCopies != null) lmHeadCopies.remove(name);
        TrainableEmbedding e = embedCopies.remove(name);
        if (e != null) e.close();
        if (active.contains(name)) {
            List<String> rest = new ArrayList<>(active);
            rest.remove(name);
            if (rest.isEmpty() && !configs.isEmpty()) rest.add(configs.keySet().iterator().next());
            setAdapters(rest);
        }
    }

    /** Training mode: lora_dropout is applied (peft's model.train()); eval mode (the default) skips it. */
    public void train(boolean training) {
        this.training = training;
        for (LoraLinear l : loraLayers.values()) l.setTraining(training);
    }

    /** The seed this step's dropout masks derive from (set once per optimizer step, before forward). */
    public void setStep(long stepSeed) {
        for (LoraLinear l : loraLayers.values()) l.setStep(stepSeed);
    }

    /** Drops every adapter gradient (set_to_none). */
    public void zeroGrad() {
        for (LoraLinear l : loraLayers.values()) l.zeroGrad();
        if (lmHeadCopies != null) lmHeadCopies.zeroGrad();
        for (TrainableEmbedding e : embedCopies.values()) e.weight().zeroGrad();
    }

    /**
     * The trainable embedding copy (modules_to_save ["embed_tokens"]) of the active adapter, or null
     * when there is none or adapters are disabled. Integration point: while this is non-null the
     * decoder must embed tokens with {@link TrainableEmbedding#forward} (and send the embedding
     * gradient to {@link TrainableEmbedding#backward}) instead of using the frozen table.
     */
    public TrainableEmbedding embeddingOverride() {
        if (disabled || active.isEmpty()) return null;
        return embedCopies.get(active.getFirst());
    }

    // ---- parameters ----

    /**
     * What the optimizer trains: the active, trainable adapters' tensors and modules_to_save copies,
     * in model order, under peft's in-memory names (e.g.
     * "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight").
     */
    public List<Param> trainableParameters() {
        checkLoaded();
        List<Param> out = new ArrayList<>();
        String first = active.isEmpty() ? null : active.getFirst();
        if (first != null && !frozen.contains(first) && embedCopies.containsKey(first)) out.addAll(embedCopies.get(first).trainableParameters());
        for (LoraLinear l : loraLayers.values()) {
            for (Param p : l.trainableParameters()) {
                if (!isFrozenName(p.name())) out.add(p);
            }
        }
        if (lmHeadCopies != null && first != null && !frozen.contains(first) && lmHeadCopies.has(first)) {
            out.addAll(lmHeadCopies.copy(first).trainableParameters());
        }
        return out;
    }

    private boolean isFrozenName(String paramName) {
        for (String f : frozen) if (paramName.contains("." + f + ".")) return true;
        return false;
    }

    /** {trainable, all} parameter counts as peft's get_nb_trainable_parameters counts them (4-bit weights by element). */
    public long[] parameterCounts() {
        checkLoaded();
        long trainable = 0;
        for (Param p : trainableParameters()) trainable += p.value().numel();
        var c = model.config();
        long all = (long) c.vocabSize() * c.hiddenSize() + (long) (2 * c.numHiddenLayers() + 1) * c.hiddenSize();
        for (String path : model.linearPaths()) {
            Linear l = model.linear(path);
            Linear baseLayer = l instanceof LoraLinear ll ? ll.base() : l instanceof ModulesToSaveLinear m ? m.original() : l;
            if (!(path.equals(PeftKeys.LM_HEAD) && tied)) { // a tied head is the embedding: named_parameters() lists it once
                all += (long) baseLayer.outFeatures() * baseLayer.inFeatures();
                Tensor bt = baseLayer instanceof DenseLinear d ? d.bias() : baseLayer instanceof QuantizedLinear q ? q.bias() : null;
                if (bt != null) all += bt.numel();
            }
            if (l instanceof LoraLinear ll) all += ll.adapterNumel();
            if (l instanceof ModulesToSaveLinear m) all += m.copiesNumel();
        }
        for (TrainableEmbedding e : embedCopies.values()) all += e.weight().numel();
        return new long[] {trainable, all};
    }

    /** peft's print_trainable_parameters line: "trainable params: 1,024 || all params: 1,000,000 || trainable%: 0.1024". */
    public String printTrainableParameters() {
        long[] n = parameterCounts();
        String line = String.format(Locale.ROOT, "trainable params: %,d || all params: %,d || trainable%%: %.4f",
                n[0], n[1], 100.0 * n[0] / n[1]);
        System.out.println(line);
        return line;
    }

    // ---- merging ----

    /** Merges the active adapters into (copies of) the dense base weights; see {@link LoraLinear#merge}. */
    public void merge() {
        checkLoaded();
        for (LoraLinear l : loraLayers.values()) l.merge(on(l.path()), null);
    }

    public void unmerge() {
        checkLoaded();
        for (LoraLinear l : loraLayers.values()) if (l.merged()) l.unmerge(on(l.path()));
    }

    /** {@link #mergeAndUnload(DType)} with float32 layers for quantized bases. */
    public TransformerLM mergeAndUnload() { return mergeAndUnload(DType.F32); }

    /**
     * peft's merge_and_unload: every LoRA layer becomes its base with the active adapters merged
     * (W + s B A; DoRA rescaled rows), lm_head becomes the active modules_to_save copy, and the
     * model is returned without any adapter. A 4-bit/8-bit base is dequantized and merged into a
     * dense layer of {@code quantizedDType} (re-quantizing it would round the merged weight again).
     * This PeftModel is unusable afterwards; the returned model (and its CausalLM) belong to the caller.
     */
    public TransformerLM mergeAndUnload(DType quantizedDType) {
        checkLoaded();
        if (!disabled && !active.isEmpty() && embedCopies.containsKey(active.getFirst())) {
            throw new UnsupportedOperationException("the active adapter trains embed_tokens in full (modules_to_save); the model "
                    + "has no way to take a new embedding table, so merge_and_unload cannot produce it: save the adapter instead");
        }
        boolean anyQuantized = false;
        for (Map.Entry<String, LoraLinear> e : loraLayers.entrySet()) {
            LoraLinear l = e.getValue();
            if (disabled) l.setActiveAdapters(List.of());
            anyQuantized |= l.base() instanceof QuantizedLinear && !l.activeAdapters().isEmpty();
            model.setLinear(e.getKey(), l.unloadMerged(on(e.getKey()), quantizedDType));
        }
        if (anyQuantized) {
            LOG.log(System.Logger.Level.WARNING, "merged LoRA into quantized layers by dequantizing them: the merged layers are dense "
                    + quantizedDType + "; quantizing the merged model again rounds the merged weights and may change generations");
        }
        if (lmHeadCopies != null) {
            if (disabled) lmHeadCopies.setActive(null);
            model.setLinear(PeftKeys.LM_HEAD, lmHeadCopies.unload());
            lmHeadCopies = null;
        }
        embedCopies.values().forEach(TrainableEmbedding::close);
        embedCopies.clear();
        loraLayers.clear();
        unloaded = true;
        model.setEmbeddingProvider(null);
        return model;
    }

    // ---- add_weighted_adapter ----

    /** {@link #addWeightedAdapter(List, List, String, String, Integer)} with svd_rank = max of the ranks. */
    public void addWeightedAdapter(List<String> adapters, List<Double> weights, String newName, String combinationType) {
        addWeightedAdapter(adapters, weights, newName, combinationType, null);
    }

    /**
     * peft's add_weighted_adapter for combination types "linear", "cat" and "svd" (see
     * {@link WeightedAdapters} for the math). The new adapter has lora_alpha = r (scaling 1,
     * use_rslora off), is not activated and is frozen, as in peft. A name that exists already is
     * a no-op (peft returns silently; we log it).
     */
    public void addWeightedAdapter(List<String> adapters, List<Double> weights, String newName, String combinationType, Integer svdRank) {
        checkLoaded();
        if (configs.containsKey(newName)) {
            LOG.log(System.Logger.Level.WARNING, "add_weighted_adapter: adapter '" + newName + "' exists already; nothing done (as peft)");
            return;
        }
        if (adapters.isEmpty() || adapters.size() != weights.size()) {
            throw new IllegalArgumentException("add_weighted_adapter needs one weight per adapter, got " + adapters + " and " + weights);
        }
        for (String a : adapters) {
            if (!configs.containsKey(a)) throw new IllegalArgumentException("Adapter " + a + " does not exist");
            if (configs.get(a).useDora()) throw new IllegalArgumentException("add_weighted_adapter does not support DoRA adapters ('" + a + "')");
        }
        long withCopies = adapters.stream().filter(a -> configs.get(a).modulesToSave() != null).count();
        if (withCopies > 1) {
            throw new IllegalArgumentException("Cannot add weighted adapters if they target the same module with modules_to_save, "
                    + "but found " + withCopies + " adapters with modules_to_save");
        }
        String type = adapters.size() == 1 ? "linear" : combinationType;
        List<Integer> ranks = adapters.stream().map(a -> configs.get(a).r()).toList();
        int newRank = switch (type) {
            case "linear" -> {
                if (new HashSet<>(ranks).size() != 1) {
                    throw new IllegalArgumentException("All adapters must have the same r value when using combination_type linear, "
                            + "ties, dare_ties or dare_linear.");
                }
                yield ranks.getFirst();
            }
            case "cat" -> ranks.stream().mapToInt(Integer::intValue).sum();
            case "svd" -> svdRank != null ? svdRank : ranks.stream().mapToInt(Integer::intValue).max().orElseThrow();
            default -> throw new IllegalArgumentException("Invalid combination_type: " + combinationType
                    + " (qlora4j implements linear, cat and svd)");
        };
        LoraConfig first = configs.get(adapters.getFirst());
        ModuleSelector targets = combinedTargets(adapters);
        // per-module ranks that differ from r go into rank_pattern (with alpha = rank) so the saved config reloads them
        Map<String, Integer> rankPattern = new LinkedHashMap<>();
        Map<String, Double> alphaPattern = new LinkedHashMap<>();
        Map<String, WeightedAdapters.Factors> factors = new LinkedHashMap<>();
        for (LoraLinear l : loraLayers.values()) {
            List<LoraAdapter> src = new ArrayList<>();
            List<Double> w = new ArrayList<>();
            List<double[]> deltas = new ArrayList<>();
            for (int i = 0; i < adapters.size(); i++) {
                if (!l.hasAdapter(adapters.get(i))) continue;
                src.add(l.adapter(adapters.get(i)));
                w.add(weights.get(i));
                if (type.equals("svd")) deltas.add(l.deltaWeight(on(l.path()), adapters.get(i)));
            }
            if (src.isEmpty()) continue;
            int out = l.outFeatures(), in = l.inFeatures();
            WeightedAdapters.Factors f = switch (type) {
                case "linear" -> WeightedAdapters.linear(on(l.path()), src, w, out, in, l.path());
                case "cat" -> WeightedAdapters.cat(on(l.path()), src, w, out, in);
                default -> WeightedAdapters.svd(src, deltas, w, out, in, newRank, l.path());
            };
            factors.put(l.path(), f);
            if (f.rank() != newRank) {
                String key = Pattern.quote(l.path());
                rankPattern.put(key, f.rank());
                alphaPattern.put(key, (double) f.rank());
            }
        }
        LoraConfig c = first.toBuilder().r(newRank).loraAlpha(newRank).useRslora(false).targetModules(targets)
                .rankPattern(rankPattern).alphaPattern(alphaPattern).initLoraWeights(dev.qlora4j.peft.config.InitLoraWeights.of(true))
                .build();
        for (Map.Entry<String, WeightedAdapters.Factors> e : factors.entrySet()) {
            WeightedAdapters.Factors f = e.getValue();
            LoraLinear l = loraLayers.get(e.getKey());
            l.putAdapter(new LoraAdapter(newName, f.rank(), f.rank(), 1.0, c.loraDropout(),
                    TrainableTensor.of(on(l.path()), f.a(), f.rank(), l.inFeatures()),
                    TrainableTensor.of(on(l.path()), f.b(), l.outFeatures(), f.rank()), null, false));
        }
        addModulesToSaveCopies(newName, c, null);
        configs.put(newName, c);
        frozen.add(newName);
    }

    private ModuleSelector combinedTargets(List<String> adapters) {
        List<ModuleSelector> sel = adapters.stream().map(a -> configs.get(a).targetModules()).toList();
        if (sel.stream().allMatch(s -> s instanceof ModuleSelector.Names)) {
            Set<String> names = new LinkedHashSet<>();
            for (ModuleSelector s : sel) names.addAll(((ModuleSelector.Names) s).names());
            return new ModuleSelector.Names(List.copyOf(names));
        }
        if (sel.stream().allMatch(s -> s instanceof ModuleSelector.Regex)) {
            return new ModuleSelector.Regex(String.join("|", sel.stream().map(s -> "(" + ((ModuleSelector.Regex) s).pattern() + ")").toList()));
        }
        throw new IllegalArgumentException("all adapter configs should follow the same target modules type. Combining adapters "
                + "with `target_modules` type being a mix of list/set and string is not supported.");
    }

    // ---- files ----

    /** peft's save_pretrained: every adapter ("default" in {@code dir}, others in {@code dir/<name>}). */
    public void save(Path dir) {
        for (String name : configs.keySet()) save(dir, name);
    }

    /** Saves one adapter where peft's save_pretrained puts it. Returns the folder written. */
    public Path save(Path dir, String adapter) {
        checkLoaded();
        LoraConfig c = config(adapter);
        Path target = adapter.equals(DEFAULT_ADAPTER) ? dir : dir.resolve(adapter);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        for (LoraLinear l : loraLayers.values()) {
            if (!l.hasAdapter(adapter)) continue;
            LoraAdapter a = l.adapter(adapter);
            tensors.put(PeftKeys.loraA(l.path()), host(l.path(), a.a()));
            tensors.put(PeftKeys.loraB(l.path()), host(l.path(), a.b()));
            if (a.useDora()) tensors.put(PeftKeys.magnitude(l.path()), host(l.path(), a.magnitude()));
        }
        if (lmHeadCopies != null && lmHeadCopies.has(adapter)) {
            TrainableDense d = lmHeadCopies.copy(adapter);
            tensors.put(PeftKeys.savedModule(PeftKeys.LM_HEAD, "weight"), host(PeftKeys.LM_HEAD, d.weight()));
            if (d.bias() != null) tensors.put(PeftKeys.savedModule(PeftKeys.LM_HEAD, "bias"), host(PeftKeys.LM_HEAD, d.bias()));
        }
        if (embedCopies.containsKey(adapter)) {
            tensors.put(PeftKeys.savedModule(PeftKeys.EMBED_TOKENS, "weight"), host(PeftKeys.EMBED_TOKENS, embedCopies.get(adapter).weight()));
        }
        try {
            Files.createDirectories(target);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("cannot create " + target + ": " + e.getMessage(), e);
        }
        SafetensorsWriter.write(target.resolve(PeftKeys.WEIGHTS_FILE), tensors, Map.of("format", "pt"));
        String baseName = c.baseModelNameOrPath() != null ? c.baseModelNameOrPath() : baseModelNameOrPath;
        PeftConfigs.save(target, c.withBaseModel(baseName, c.revision()).withInferenceMode(true));
        return target;
    }

    /** A host copy of a module's adapter tensor, read through the backend of the device it lives on. */
    private Tensor host(String modulePath, TrainableTensor t) { return on(modulePath).toHost(t.value()); }

    /**
     * peft's load_adapter: reads {@code dir}/adapter_config.json (LORA) and adapter_model.safetensors
     * and adds the adapter as {@code name} (not activated). Every tensor the config implies must be
     * present with the shape the model implies (else an error naming the key); tensors the model
     * has no place for are reported (logged) and returned.
     */
    public List<String> loadAdapter(Path dir, String name, boolean isTrainable) {
        checkLoaded();
        PeftConfig pc = PeftConfigs.load(dir);
        if (!(pc instanceof LoraConfig lc)) {
            throw new IllegalArgumentException(dir + ": peft_type " + pc.peftType() + " is not a LoRA adapter; "
                    + (pc.peftType().equals("BOTTLENECK") ? "load it with BottleneckModel" : "this loader reads LORA adapters"));
        }
        LoraConfig c = prepare(name, lc).withInferenceMode(!isTrainable);
        Path file = dir.resolve(PeftKeys.WEIGHTS_FILE);
        if (!Files.exists(file)) {
            String hint = Files.exists(dir.resolve("adapter_model.bin"))
                    ? " (found adapter_model.bin: pickled weights are not read; re-save the adapter with safe_serialization=True)" : "";
            throw new IllegalArgumentException(file + " does not exist" + hint);
        }
        List<String> targets = TargetModules.select(c, model.linearPaths()).targeted();
        Map<String, int[]> expected = new LinkedHashMap<>();
        for (String path : targets) {
            Linear l = model.linear(path);
            int r = c.rank(path);
            expected.put(PeftKeys.loraA(path), new int[] {r, l.inFeatures()});
            expected.put(PeftKeys.loraB(path), new int[] {l.outFeatures(), r});
            if (c.useDora()) expected.put(PeftKeys.magnitude(path), new int[] {l.outFeatures()});
        }
        Set<String> optional = new HashSet<>();
        if (c.modulesToSave() != null) {
            for (String m : c.modulesToSave()) {
                if (PeftKeys.LM_HEAD.endsWith(m)) {
                    Linear head = lmHeadCopies != null ? lmHeadCopies.original() : model.linear(PeftKeys.LM_HEAD);
                    expected.put(PeftKeys.savedModule(PeftKeys.LM_HEAD, "weight"), new int[] {head.outFeatures(), head.inFeatures()});
                    String bias = PeftKeys.savedModule(PeftKeys.LM_HEAD, "bias");
                    if (hostBias(head) != null) expected.put(bias, new int[] {head.outFeatures()}); else optional.add(bias);
                } else if (PeftKeys.EMBED_TOKENS.endsWith(m)) {
                    expected.put(PeftKeys.savedModule(PeftKeys.EMBED_TOKENS, "weight"), model.embedTokens().shape());
                }
            }
        }
        Map<String, float[]> values = new LinkedHashMap<>();
        List<String> unexpected = new ArrayList<>();
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            List<String> missing = new ArrayList<>();
            for (String k : expected.keySet()) if (!f.has(k)) missing.add(k);
            if (!missing.isEmpty()) {
                throw new IllegalArgumentException(file + ": " + missing.size() + " tensor(s) that adapter_config.json implies for this "
                        + "model are missing: " + (missing.size() > 10 ? missing.subList(0, 10) + " ..." : missing)
                        + "; the file has " + new TreeSet<>(f.names()).stream().limit(10).toList()
                        + (f.names().size() > 10 ? " ..." : "") + ". The adapter was saved for other target modules or another base model");
            }
            for (Map.Entry<String, int[]> e : expected.entrySet()) {
                Tensor t = f.tensor(e.getKey());
                if (!Arrays.equals(t.shape(), e.getValue())) {
                    throw new IllegalArgumentException(file + ": tensor " + e.getKey() + " has shape " + Arrays.toString(t.shape())
                            + " but this model expects " + Arrays.toString(e.getValue()) + " (rank from adapter_config.json r/rank_pattern, "
                            + "features from the base model): the adapter was trained with another config or for another base model");
                }
                if (!t.dtype().isFloating()) {
                    throw new IllegalArgumentException(file + ": tensor " + e.getKey() + " is " + t.dtype() + "; adapter weights are floating point");
                }
                values.put(e.getKey(), t.toFloatArray());
            }
            for (String k : new TreeSet<>(f.names())) {
                if (expected.containsKey(k)) continue;
                if (optional.contains(k)) {
                    throw new IllegalArgumentException(file + ": tensor " + k + " is a bias but this model's lm_head has none");
                }
                unexpected.add(k);
            }
        }
        if (!unexpected.isEmpty()) {
            LOG.log(System.Logger.Level.WARNING, file + ": " + unexpected.size() + " tensor(s) have no place in this model and were "
                    + "ignored: " + (unexpected.size() > 10 ? unexpected.subList(0, 10) + " ..." : unexpected));
        }
        injectAdapter(name, c, (lora, path) -> {
            int r = c.rank(path);
            float[] mag = c.useDora() ? values.get(PeftKeys.magnitude(path)) : null;
            lora.putAdapter(new LoraAdapter(name, r, c.alpha(path), c.scaling(path), c.loraDropout(),
                    TrainableTensor.of(on(path), values.get(PeftKeys.loraA(path)), r, lora.inFeatures()),
                    TrainableTensor.of(on(path), values.get(PeftKeys.loraB(path)), lora.outFeatures(), r),
                    mag == null ? null : TrainableTensor.of(on(path), mag, lora.outFeatures()), isTrainable));
        });
        addModulesToSaveCopies(name, c, values);
        configs.put(name, c);
        if (!isTrainable) frozen.add(name);
        return unexpected;
    }

    // ---- lifecycle ----

    private void checkLoaded() {
        if (unloaded) throw new IllegalStateException("this PeftModel was merged and unloaded; use the model mergeAndUnload returned");
    }

    /** Restores the original layers and closes every adapter (used when construction fails). */
    private void detachAll() {
        for (Map.Entry<String, LoraLinear> e : loraLayers.entrySet()) {
            LoraLinear l = e.getValue();
            for (String n : l.adapterNames()) l.deleteAdapter(on(e.getKey()), n);
            model.setLinear(e.getKey(), l.base());
        }
        loraLayers.clear();
        if (lmHeadCopies != null) {
            lmHeadCopies.setActive(null);
            model.setLinear(PeftKeys.LM_HEAD, lmHeadCopies.original());
            lmHeadCopies.close();
            lmHeadCopies = null;
        }
        embedCopies.values().forEach(TrainableEmbedding::close);
        embedCopies.clear();
    }

    /**
     * Closes the adapters and the wrapped model (or CausalLM). After mergeAndUnload the returned
     * model belongs to the caller and this does nothing.
     */
    @Override
    public void close() {
        if (unloaded) return;
        unloaded = true;
        model.setEmbeddingProvider(null);
        embedCopies.values().forEach(TrainableEmbedding::close);
        embedCopies.clear();
        // a tied lm_head is not closed by the model: close its wrapper's own tensors here
        if (tied) {
            Linear head = model.linear(PeftKeys.LM_HEAD);
            if (head instanceof LoraLinear || head instanceof ModulesToSaveLinear) head.close();
        }
        if (causalLM != null) causalLM.close();
        else model.close();
    }
}
