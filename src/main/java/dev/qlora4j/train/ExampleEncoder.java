package dev.qlora4j.train;

import dev.qlora4j.io.tokenizer.ChatMessage;
import dev.qlora4j.io.tokenizer.EncodedText;
import dev.qlora4j.io.tokenizer.RenderedChat;
import dev.qlora4j.io.tokenizer.Tokenizer;

import java.util.Arrays;
import java.util.List;

/**
 * Tokenizes the three dataset formats of TRL's SFTTrainer into {@link Example}s (labels unshifted,
 * -100 where the loss is off). Training and evaluation use the same encoding.
 *
 * <ul>
 *   <li>{"text"}: tokenizer(text) (BOS as the tokenizer adds it) plus EOS when the text does not
 *       already end with it, as TRL appends it; every token is trained, so the model learns to
 *       stop.</li>
 *   <li>{"prompt", "completion"}: prompt + completion tokenized as one text (so the tokens at the
 *       seam are the ones the model sees at inference), EOS appended; with completion_only_loss
 *       only tokens that cover completion characters (and the EOS) are trained. TRL masks by the
 *       prompt's own token count; covering characters gives the same mask when the prompt
 *       tokenizes to a prefix and still a sensible one when a token straddles the seam (it is
 *       trained, as it produces completion text).</li>
 *   <li>{"messages": [{role, content}...]}: the tokenizer's chat template renders the whole
 *       conversation (no generation prompt), tokenized without adding special tokens (the template
 *       writes them, as apply_chat_template does); with assistant_only_loss only tokens inside
 *       assistant turns (including what the template closes the turn with, e.g. &lt;|im_end|&gt;)
 *       are trained. No EOS is appended: ending the turn is the template's job.</li>
 * </ul>
 */
public final class ExampleEncoder {
    private final Tokenizer tokenizer;
    private final int eos;
    private final boolean completionOnlyLoss;
    private final boolean assistantOnlyLoss;

    public ExampleEncoder(Tokenizer tokenizer, boolean completionOnlyLoss, boolean assistantOnlyLoss) {
        this.tokenizer = tokenizer;
        int[] e = tokenizer.eosTokenIds();
        this.eos = e.length > 0 ? e[0] : -1;
        this.completionOnlyLoss = completionOnlyLoss;
        this.assistantOnlyLoss = assistantOnlyLoss;
    }

    public Example text(String text, int line) {
        return Example.allTrained(withEos(tokenizer.encode(text, true)), line);
    }

    public Example promptCompletion(String prompt, String completion, int line) {
        EncodedText enc = tokenizer.encodeWithOffsets(prompt + completion, true);
        int[] ids = withEos(enc.ids());
        int[] labels = new int[ids.length];
        for (int i = 0; i < ids.length; i++) {
            boolean completionToken;
            if (i >= enc.ids().length) {
                completionToken = true; // the EOS appended here
            } else if (enc.charStart()[i] < 0) {
                completionToken = i > 0 && ids[i] == eos; // an EOS the tokenizer adds trains; a BOS does not
            } else {
                completionToken = enc.charEnd()[i] > prompt.length();
            }
            labels[i] = !completionOnlyLoss || completionToken ? ids[i] : Example.IGNORE;
        }
        return new Example(ids, labels, line);
    }

    public Example messages(List<ChatMessage> messages, int line) {
        RenderedChat chat = tokenizer.chatTemplate().renderWithAssistantSpans(messages);
        EncodedText enc = tokenizer.encodeWithOffsets(chat.text(), false);
        int[] ids = enc.ids();
        if (ids.length == 0) throw new IllegalArgumentException("the chat template rendered an empty text");
        int[] labels = ids.clone();
        if (assistantOnlyLoss) {
            boolean[] in = enc.tokensIn(chat.assistantSpans());
            for (int i = 0; i < ids.length; i++) if (!in[i]) labels[i] = Example.IGNORE;
        }
        return new Example(ids, labels, line);
    }

    private int[] withEos(int[] ids) {
        if (eos < 0 || (ids.length > 0 && ids[ids.length - 1] == eos)) return ids;
        int[] out = Arrays.copyOf(ids, ids.length + 1);
        out[ids.length] = eos;
        return out;
    }
}
