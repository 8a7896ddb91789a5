package dev.qlora4j.io.tokenizer;

import com.fasterxml.jackson.databind.JsonNode;

import java.util.HashMap;
import java.util.Map;

/**
 * Token string <-> id maps read from tokenizer.json (model vocabulary plus added tokens), for the
 * lookups the native tokenizer does not expose: special-token ids, id -> token string, vocab size.
 */
final class TokenizerVocab {
    private final Map<String, Integer> ids = new HashMap<>();
    private final Map<Integer, String> tokens = new HashMap<>();
    private int size;

    TokenizerVocab(JsonNode tokenizerJson, String source) {
        JsonNode vocab = tokenizerJson.path("model").path("vocab");
        if (vocab.isObject()) {                 // BPE, WordLevel, WordPiece: {"token": id}
            vocab.fields().forEachRemaining(e -> put(e.getKey(), e.getValue().asInt()));
        } else if (vocab.isArray()) {           // Unigram: [["piece", score], ...], id = index
            for (int i = 0; i < vocab.size(); i++) put(vocab.get(i).get(0).asText(), i);
        } else {
            throw new IllegalArgumentException(source + ": model.vocab is missing; is this a Hugging Face tokenizer.json?");
        }
        for (JsonNode t : tokenizerJson.path("added_tokens")) put(t.get("content").asText(), t.get("id").asInt());
    }

    private void put(String token, int id) {
        ids.put(token, id);
        tokens.put(id, token);
        size = Math.max(size, id + 1);
    }

    /** Id of a token string, or -1. */
    int id(String token) {
        return token == null ? -1 : ids.getOrDefault(token, -1);
    }

    /** Token string of an id (as transformers' convert_ids_to_tokens), or null. */
    String token(int id) {
        return tokens.get(id);
    }

    /** Largest id + 1 (transformers' len(tokenizer)). */
    int size() {
        return size;
    }
}
