package dev.qlora4j;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.nio.file.Path;

/** Locates the golden fixtures made by tools/golden/make_goldens.py (src/test/resources/golden). */
public final class Golden {
    private Golden() {}

    public static final String[] MODELS = {"llama-f32", "llama-bf16", "mistral-f32", "qwen2-f32"};

    public static Path dir(String model) {
        try {
            return Path.of(Golden.class.getResource("/golden/" + model + "/config.json").toURI()).getParent();
        } catch (URISyntaxException | NullPointerException e) {
            throw new IllegalStateException("golden fixture " + model + " missing: run tools/golden/make_goldens.py", e);
        }
    }

    public static JsonNode json(String model) {
        try {
            return new ObjectMapper().readTree(dir(model).resolve("golden.json").toFile());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static int[] ints(JsonNode array) {
        int[] out = new int[array.size()];
        for (int i = 0; i < out.length; i++) out[i] = array.get(i).asInt();
        return out;
    }

    /** max |a - b| / max |b|: relative to the logits' scale, so near-zero entries do not dominate. */
    public static double maxRelError(float[] actual, float[] expected) {
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(actual[i] - expected[i]));
            maxRef = Math.max(maxRef, Math.abs(expected[i]));
        }
        return maxDiff / maxRef;
    }
}
