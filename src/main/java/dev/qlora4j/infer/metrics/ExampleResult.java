package dev.qlora4j.infer.metrics;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One evaluated example.
 *
 * @param example      the input line
 * @param promptText   the text the model continued (a chat rendered with its generation prompt)
 * @param prediction   the generated answer (special tokens skipped; cut at a stop string or the chat turn's end)
 * @param exactMatch   the prediction equals a reference once both are whitespace-stripped
 * @param sentenceBleu sacreBLEU's sentence_bleu of the prediction (effective order, exp smoothing)
 * @param stopReason   "eos", "end_of_turn", "stop_string" or "length"
 * @param newTokens    tokens generated for this example (up to the stop)
 */
public record ExampleResult(GenerationExample example, String promptText, String prediction, boolean exactMatch,
                            BleuScore sentenceBleu, String stopReason, int newTokens) {

    /** The report line: line, prompt, reference (a list when several), prediction, exact_match, bleu, stop_reason. */
    public Map<String, Object> toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("line", example.line());
        m.put("prompt", promptText);
        m.put("reference", example.references().size() == 1 ? example.references().getFirst() : example.references());
        m.put("prediction", prediction);
        m.put("exact_match", exactMatch);
        m.put("bleu", sentenceBleu.score());
        m.put("stop_reason", stopReason);
        m.put("new_tokens", newTokens);
        return m;
    }

    /** The exact-match rule: equal after stripping (Python's) whitespace from both ends. */
    static boolean matches(String prediction, java.util.List<String> references) {
        String p = PythonWhitespace.strip(prediction);
        for (String r : references) if (p.equals(PythonWhitespace.strip(r))) return true;
        return false;
    }
}
