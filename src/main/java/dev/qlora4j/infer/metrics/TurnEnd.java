package dev.qlora4j.infer.metrics;

import dev.qlora4j.io.tokenizer.ChatMessage;
import dev.qlora4j.io.tokenizer.ChatTemplate;
import dev.qlora4j.io.tokenizer.Tokenizer;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Where a chat answer ends. Generation stops at EOS, but many chat templates close an assistant
 * turn with their own special token (ChatML's &lt;|im_end|&gt;); when the model's EOS is another
 * token, a chat-tuned model writes that token and goes on with a next turn, which decoding (special
 * tokens skipped) would glue onto the answer. The answer is cut before that token.
 */
final class TurnEnd {
    private static final String PROBE = "qlora4jTurnEndProbe";

    private TurnEnd() {}

    /**
     * The special token the template writes right after an assistant message, found by rendering
     * the history plus a probe answer; -1 when it writes none, writes ordinary text, or writes one
     * of the EOS ids (generation stops there anyway).
     */
    static int tokenId(Tokenizer tokenizer, ChatTemplate template, List<ChatMessage> history, int[] eosIds) {
        List<ChatMessage> probe = new ArrayList<>(history);
        probe.add(ChatMessage.assistant(PROBE));
        String text = template.render(probe, false);
        int at = text.lastIndexOf(PROBE);
        if (at < 0) return -1;
        String after = PythonWhitespace.strip(text.substring(at + PROBE.length()));
        if (after.isEmpty()) return -1;
        int[] ids = tokenizer.encode(after, false);
        if (ids.length == 0) return -1;
        int id = ids[0];
        for (int e : eosIds) if (e == id) return -1;
        boolean special = tokenizer.decode(new int[] {id}, true).isEmpty() && !tokenizer.decode(new int[] {id}, false).isEmpty();
        return special ? id : -1;
    }

    /** Index of the first turnEndId in the output, or -1 (also when turnEndId is -1). */
    static int position(int[] outputIds, int turnEndId) {
        if (turnEndId < 0) return -1;
        for (int k = 0; k < outputIds.length; k++) if (outputIds[k] == turnEndId) return k;
        return -1;
    }

    /** The answer before the turn's end: the first {@code end} tokens decoded (special tokens skipped), cut at the first stop string. */
    static String answerBefore(int[] outputIds, int end, Tokenizer tokenizer, List<String> stopStrings) {
        String text = tokenizer.decode(Arrays.copyOf(outputIds, end), true);
        int cut = text.length();
        for (String stop : stopStrings) {
            int at = text.indexOf(stop);
            if (at >= 0) cut = Math.min(cut, at);
        }
        return text.substring(0, cut);
    }
}
