package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Which backend runs each part of a {@link TransformerLM}: the token embedding, every decoder layer, and the
 * final norm with the LM head ("the head"). One backend for everything is the usual single-device model; a
 * model split over several GPUs (sequential model parallelism, as accelerate's device_map="auto" runs it) has
 * one backend per GPU, and hidden states cross from one to the next through
 * {@link dev.qlora4j.backend.DeviceTransfer}. Backends are compared by identity: two backends on the same GPU
 * are two devices here (their streams are ordered like two GPUs'), which is how the tests exercise every
 * cross-device path on one GPU or on two CPU backends.
 *
 * <p>Layers that stream their weights from cpu/disk run on the backend the streaming slots live on (the plan's
 * last GPU, see {@code Offloading.devices}). Backends in {@code owned} were made for the model (the GPUs beyond
 * the caller's) and are closed with it.
 */
public final class ModelDevices implements AutoCloseable {
    private final Backend embedding;
    private final List<Backend> layers;
    private final Backend head;
    private final List<Backend> owned;
    private final List<Backend> distinct;

    private ModelDevices(Backend embedding, List<Backend> layers, Backend head, List<Backend> owned) {
        this.embedding = embedding;
        this.layers = List.copyOf(layers);
        this.head = head;
        this.owned = List.copyOf(owned);
        List<Backend> d = new ArrayList<>();
        addOnce(d, embedding);
        for (Backend b : this.layers) addOnce(d, b);
        addOnce(d, head);
        this.distinct = Collections.unmodifiableList(d);
    }

    private static void addOnce(List<Backend> list, Backend b) {
        for (Backend x : list) if (x == b) return;
        list.add(b);
    }

    /** Every part on one backend (the model does exactly what it did before several devices existed). */
    public static ModelDevices single(Backend b, int numLayers) {
        return new ModelDevices(b, Collections.nCopies(numLayers, b), b, List.of());
    }

    /**
     * @param embedding where model.embed_tokens lives and the token ids are looked up
     * @param layers    the backend of each decoder layer, in order
     * @param head      where model.norm and lm_head live: logits and the loss are made there
     * @param owned     backends made for this model, closed by {@link #close} (none of them may be the caller's)
     */
    public static ModelDevices of(Backend embedding, List<Backend> layers, Backend head, List<Backend> owned) {
        boolean missing = embedding == null || head == null;
        for (Backend b : layers) missing |= b == null;
        if (missing) {
            throw new IllegalArgumentException("every part of the model needs a backend (embedding, each layer, head)");
        }
        return new ModelDevices(embedding, layers, head, owned);
    }

    /**
     * Layers 0..split-1 (and the embedding) on first, the rest (and the final norm + LM head) on second: the
     * two-device split the tests use.
     */
    public static ModelDevices split(Backend first, Backend second, int numLayers, int split) {
        if (split < 0 || split > numLayers) {
            throw new IllegalArgumentException("split point " + split + " is outside 0.." + numLayers);
        }
        List<Backend> l = new ArrayList<>();
        for (int i = 0; i < numLayers; i++) l.add(i < split ? first : second);
        return new ModelDevices(first, l, second, List.of());
    }

    /**
     * The decoder layers split evenly over backends in order (layer i on backends[i * n / layers], as accelerate's
     * "balanced" map does with equal GPUs), the embedding on the first, the final norm and LM head on the last.
     * The backends stay the caller's.
     */
    public static ModelDevices balanced(List<Backend> backends, int numLayers) {
        if (backends.isEmpty()) throw new IllegalArgumentException("balanced placement needs at least one backend");
        List<Backend> l = new ArrayList<>();
        for (int i = 0; i < numLayers; i++) l.add(backends.get((int) ((long) i * backends.size() / numLayers)));
        return new ModelDevices(backends.getFirst(), l, backends.getLast(), List.of());
    }

    public Backend embedding() { return embedding; }

    public Backend layer(int i) { return layers.get(i); }

    public Backend head() { return head; }

    public int numLayers() { return layers.size(); }

    /** True when one backend runs everything. */
    public boolean isSingle() { return distinct.size() == 1; }

    /** The distinct backends in model order (embedding first, head last). */
    public List<Backend> backends() { return distinct; }

    /**
     * The backend a parameter or module of this model lives on, from its name: "...layers.N..." -> layer N's,
     * "...embed_tokens..." -> the embedding's, anything else (lm_head, model.norm) -> the head's.
     */
    public Backend forName(String name) {
        int layer = layerOf(name);
        if (layer >= 0 && layer < layers.size()) return layers.get(layer);
        if (name.contains("embed_tokens")) return embedding;
        return head;
    }

    /** N of the first "layers.N." in a dotted name, or -1. */
    static int layerOf(String name) {
        int at = name.indexOf("layers.");
        while (at >= 0) {
            int from = at + "layers.".length(), to = from;
            while (to < name.length() && Character.isDigit(name.charAt(to))) to++;
            if (to > from && (to == name.length() || name.charAt(to) == '.')) return Integer.parseInt(name.substring(from, to));
            at = name.indexOf("layers.", at + 1);
        }
        return -1;
    }

    /** Which devices run which layers, e.g. "cuda:0 [embedding, layers 0-15], cuda:1 [layers 16-31, head]". */
    public String describe() {
        StringBuilder sb = new StringBuilder();
        for (Backend b : distinct) {
            if (!sb.isEmpty()) sb.append(", ");
            sb.append(b.device()).append(" [");
            List<String> parts = new ArrayList<>();
            if (embedding == b) parts.add("embedding");
            int i = 0;
            while (i < layers.size()) {
                if (layers.get(i) != b) { i++; continue; }
                int j = i;
                while (j + 1 < layers.size() && layers.get(j + 1) == b) j++;
                parts.add(i == j ? "layer " + i : "layers " + i + "-" + j);
                i = j + 1;
            }
            if (head == b) parts.add("head");
            sb.append(String.join(", ", parts)).append(']');
        }
        return sb.toString();
    }

    /** Closes the backends made for the model (the caller's own backend stays open). */
    @Override
    public void close() {
        RuntimeException first = null;
        for (Backend b : owned) {
            try {
                b.close();
            } catch (RuntimeException e) {
                if (first == null) first = e;
            }
        }
        if (first != null) throw first;
    }
}
