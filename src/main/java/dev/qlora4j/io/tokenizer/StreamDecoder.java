package dev.qlora4j.io.tokenizer;

import java.util.Arrays;
import java.util.function.Function;

/**
 * Incremental detokenization for streaming generation.
 *
 * <p>Decoding token by token is wrong in two ways: a multi-byte character may be split over
 * several byte tokens (byte-level BPE, SentencePiece byte fallback), and decoders such as
 * Metaspace drop a word's leading space when the word is decoded alone. So each step decodes a
 * window that starts a little before the new tokens ({@code prefix..end}) and emits only the
 * part after the window's already-emitted text ({@code prefix..read}); text ending in U+FFFD (an
 * incomplete UTF-8 sequence) is held back until the next token completes it. This is the
 * algorithm of text-generation-inference and tokenizers' DecodeStream. Each step costs a decode of a few tokens, where
 * decoding the whole output grows with it (infer.Generator streams and checks stop strings with it).
 */
public final class StreamDecoder {
    private final Function<int[], String> decoder;
    private int[] ids = new int[16];
    private int size;
    private int prefixOffset; // start of the decode window
    private int readOffset;   // tokens before this are emitted

    StreamDecoder(Tokenizer tokenizer, boolean skipSpecialTokens) {
        this(ids -> tokenizer.decode(ids, skipSpecialTokens));
    }

    private StreamDecoder(Function<int[], String> decoder) {
        this.decoder = decoder;
    }

    /** A stream decoder over any ids -> text function (one that decodes a window of ids as the whole text would). */
    public static StreamDecoder over(Function<int[], String> decoder) {
        return new StreamDecoder(decoder);
    }

    /** Adds one token; returns the text it completes (often "", never a partial character). */
    public String push(int id) {
        if (size == ids.length) ids = Arrays.copyOf(ids, size * 2);
        ids[size++] = id;
        String before = decode(prefixOffset, readOffset);
        String now = decode(prefixOffset, size);
        if (now.length() > before.length() && !now.endsWith("\uFFFD")) {
            String added = now.startsWith(before) ? now.substring(before.length())
                    : now.substring(commonPrefix(before, now));
            prefixOffset = readOffset;
            readOffset = size;
            return added;
        }
        return "";
    }

    /** Adds several tokens; returns the text they complete. */
    public String push(int... newIds) {
        StringBuilder sb = new StringBuilder();
        for (int id : newIds) sb.append(push(id));
        return sb.toString();
    }

    /** Text still held back (an incomplete character at the end), emitted as is; resets nothing else. */
    public String flush() {
        String before = decode(prefixOffset, readOffset);
        String now = decode(prefixOffset, size);
        prefixOffset = readOffset = size;
        return now.length() > before.length() ? now.substring(commonPrefix(before, now)) : "";
    }

    private String decode(int from, int to) {
        return from >= to ? "" : decoder.apply(Arrays.copyOfRange(ids, from, to));
    }

    private static int commonPrefix(String a, String b) {
        int n = Math.min(a.length(), b.length()), i = 0;
        while (i < n && a.charAt(i) == b.charAt(i)) i++;
        return i;
    }
}
