package dev.qlora4j.infer.metrics;

import dev.qlora4j.Golden;
import dev.qlora4j.io.tokenizer.ChatMessage;
import dev.qlora4j.io.tokenizer.Tokenizer;
import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The chat turn's end on the golden tokenizer (ChatML template, &lt;|im_end|&gt; = 5, EOS &lt;/s&gt; = 2). */
class TurnEndTest {
    @Test
    void chatMlClosesTurnsWithImEnd() throws Exception {
        try (Tokenizer tok = Tokenizer.fromPretrained(Golden.dir("llama-f32"))) {
            List<ChatMessage> history = List.of(ChatMessage.user("Hi"));
            assertEquals(5, TurnEnd.tokenId(tok, tok.chatTemplate(), history, new int[] {2}));
            // when the turn end is an EOS id, generation stops there already
            assertEquals(-1, TurnEnd.tokenId(tok, tok.chatTemplate(), history, new int[] {2, 5}));

            GenerationExample chat = GenerationExample.chat(1, history, "Hello");
            assertEquals("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", chat.promptText(tok));
            int[] ids = chat.promptIds(tok);
            assertEquals(4, ids[0], "a chat is encoded without an added BOS: the template writes what it needs");

            int[] out = tok.encode("Hello there<|im_end|>\n<|im_start|>user\nmore", false);
            int k = TurnEnd.position(out, 5);
            assertEquals("Hello there", TurnEnd.answerBefore(out, k, tok, List.of()));
            assertEquals("Hello", TurnEnd.answerBefore(out, k, tok, List.of(" the")));
            assertEquals(-1, TurnEnd.position(tok.encode("no end", false), 5));
            assertEquals(-1, TurnEnd.position(out, -1));
        }
    }
}
