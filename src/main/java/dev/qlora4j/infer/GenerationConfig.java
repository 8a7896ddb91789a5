package dev.qlora4j.infer;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.qlora4j.model.ModelConfig;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Objects;

/**
 * generation_config.json, with transformers' GenerationConfig defaults for absent keys
 * (greedy: do_sample false, temperature 1.0, top_k 50, top_p 1.0, repetition_penalty 1.0,
 * max_length 20, min_length 0, max_new_tokens / min_new_tokens unset).
 *
 * <p>Token ids missing from the file (or the whole file missing) come from config.json, as
 * transformers' {@code GenerationConfig.from_model_config} does when a model has no
 * generation_config.json.
 *
 * @param bosTokenId        nullable
 * @param eosTokenIds       every id that ends generation (int or list in the file); empty when none
 * @param padTokenId        nullable (callers fall back to EOS, as transformers' generate() does)
 * @param maxNewTokens      nullable: when unset, max_length bounds prompt + output
 * @param minNewTokens      nullable
 */
public record GenerationConfig(Integer bosTokenId, int[] eosTokenIds, Integer padTokenId, boolean doSample,
                               double temperature, int topK, double topP, double repetitionPenalty,
                               Integer maxNewTokens, Integer minNewTokens, int maxLength, int minLength) {

    private static final ObjectMapper JSON = new ObjectMapper();

    public GenerationConfig {
        eosTokenIds = eosTokenIds == null ? new int[0] : eosTokenIds.clone();
        String w = "generation_config.json: ";
        if (!(temperature > 0)) throw new IllegalArgumentException(w + "temperature must be > 0, got " + temperature);
        if (topK < 0) throw new IllegalArgumentException(w + "top_k must be >= 0 (0 disables it), got " + topK);
        if (!(topP > 0 && topP <= 1)) throw new IllegalArgumentException(w + "top_p must be in (0, 1], got " + topP);
        if (!(repetitionPenalty > 0)) {
            throw new IllegalArgumentException(w + "repetition_penalty must be > 0, got " + repetitionPenalty);
        }
        if (maxNewTokens != null && maxNewTokens < 0) {
            throw new IllegalArgumentException(w + "max_new_tokens must be >= 0, got " + maxNewTokens);
        }
        if (minNewTokens != null && minNewTokens < 0) {
            throw new IllegalArgumentException(w + "min_new_tokens must be >= 0, got " + minNewTokens);
        }
    }

    /** transformers' defaults with the model's special token ids. */
    public static GenerationConfig fromModelConfig(ModelConfig c) {
        return new GenerationConfig(c.bosTokenId(), c.eosTokenIds(), c.padTokenId(), false, 1.0, 50, 1.0, 1.0,
                null, null, 20, 0);
    }

    /** Reads dir/generation_config.json when present, else {@link #fromModelConfig}. */
    public static GenerationConfig load(Path dir, ModelConfig fallback) throws IOException {
        Path file = dir.resolve("generation_config.json");
        if (!Files.exists(file)) return fromModelConfig(fallback);
        return parse(Files.readString(file, StandardCharsets.UTF_8), fallback);
    }

    /** Parses generation_config.json text; fallback (nullable) supplies token ids the file lacks. */
    public static GenerationConfig parse(String json, ModelConfig fallback) {
        JsonNode n;
        try {
            n = JSON.readTree(json);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException("generation_config.json is not valid JSON: " + e.getOriginalMessage(), e);
        }
        if (n == null || !n.isObject()) throw new IllegalArgumentException("generation_config.json must hold a JSON object");
        Integer bos = n.has("bos_token_id") ? nullableInt(n, "bos_token_id")
                : fallback == null ? null : fallback.bosTokenId();
        int[] eos = n.hasNonNull("eos_token_id")
                ? ModelConfig.tokenIds(n.get("eos_token_id"), "generation_config.json: eos_token_id")
                : fallback == null ? new int[0] : fallback.eosTokenIds();
        Integer pad = n.hasNonNull("pad_token_id") ? nullableInt(n, "pad_token_id")
                : fallback == null ? null : fallback.padTokenId();
        return new GenerationConfig(bos, eos, pad,
                bool(n, "do_sample", false), dbl(n, "temperature", 1.0), integer(n, "top_k", 50),
                dbl(n, "top_p", 1.0), dbl(n, "repetition_penalty", 1.0),
                nullableInt(n, "max_new_tokens"), nullableInt(n, "min_new_tokens"),
                integer(n, "max_length", 20), integer(n, "min_length", 0));
    }

    @Override
    public int[] eosTokenIds() { return eosTokenIds.clone(); }

    @Override
    public boolean equals(Object o) {
        return o instanceof GenerationConfig g && Objects.equals(bosTokenId, g.bosTokenId)
                && Arrays.equals(eosTokenIds, g.eosTokenIds) && Objects.equals(padTokenId, g.padTokenId)
                && doSample == g.doSample && temperature == g.temperature && topK == g.topK && topP == g.topP
                && repetitionPenalty == g.repetitionPenalty && Objects.equals(maxNewTokens, g.maxNewTokens)
                && Objects.equals(minNewTokens, g.minNewTokens) && maxLength == g.maxLength && minLength == g.minLength;
    }

    @Override
    public int hashCode() {
        return Objects.hash(bosTokenId, Arrays.hashCode(eosTokenIds), padTokenId, doSample, temperature, topK, topP,
                repetitionPenalty, maxNewTokens, minNewTokens, maxLength, minLength);
    }

    @Override
    public String toString() {
        return "GenerationConfig[bos=" + bosTokenId + ", eos=" + Arrays.toString(eosTokenIds) + ", pad=" + padTokenId
                + ", doSample=" + doSample + ", temperature=" + temperature + ", topK=" + topK + ", topP=" + topP
                + ", repetitionPenalty=" + repetitionPenalty + ", maxNewTokens=" + maxNewTokens + ", minNewTokens="
                + minNewTokens + ", maxLength=" + maxLength + ", minLength=" + minLength + "]";
    }

    private static Integer nullableInt(JsonNode n, String key) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return null;
        if (!v.isIntegralNumber()) throw bad(key, "an integer", v);
        return v.asInt();
    }

    private static int integer(JsonNode n, String key, int dflt) {
        Integer v = nullableInt(n, key);
        return v == null ? dflt : v;
    }

    private static double dbl(JsonNode n, String key, double dflt) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return dflt;
        if (!v.isNumber()) throw bad(key, "a number", v);
        return v.asDouble();
    }

    private static boolean bool(JsonNode n, String key, boolean dflt) {
        JsonNode v = n.get(key);
        if (v == null || v.isNull()) return dflt;
        if (!v.isBoolean()) throw bad(key, "true or false", v);
        return v.asBoolean();
    }

    private static IllegalArgumentException bad(String key, String expected, JsonNode v) {
        return new IllegalArgumentException("generation_config.json: \"" + key + "\" must be " + expected + ", got " + v);
    }
}
