package dev.qlora4j.io.tokenizer;

import ai.djl.huggingface.tokenizers.Encoding;
import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import ai.djl.huggingface.tokenizers.jni.CharSpan;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * A Hugging Face tokenizer (tokenizer.json through the Rust tokenizers library, via DJL's
 * bundled native build) plus tokenizer_config.json's special tokens and chat templates.
 *
 * <p>{@code encode(text, true)} gives what transformers' {@code tokenizer(text)} gives: when
 * tokenizer_config.json sets add_bos_token / add_eos_token explicitly (Llama and Mistral do),
 * BOS / EOS are added accordingly, as transformers rebuilds the post-processor from those
 * flags; otherwise tokenizer.json's post-processor decides (Llama 3's TemplateProcessing adds
 * &lt;|begin_of_text|&gt;, Qwen2's ByteLevel adds nothing). DJL's own defaults (special tokens on,
 * truncation to 512, padding) are all switched off: callers truncate and pad.
 *
 * <p>Not thread-safe to close while encoding; encoding itself may run from several threads.
 */
public final class Tokenizer implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(Tokenizer.class.getName());
    private static final AtomicBoolean PAD_HINT_SHOWN = new AtomicBoolean();

    static {
        // DJL pings EC2 metadata endpoints for telemetry on first use unless told not to.
        if (System.getenv("OPT_OUT_TRACKING") == null && System.getProperty("OPT_OUT_TRACKING") == null) {
            System.setProperty("OPT_OUT_TRACKING", "true");
        }
        // On a machine with CUDA, DJL picks a CUDA build of the tokenizer library and tries to download it;
        // the CPU build bundled in the jar is all a tokenizer needs (and no download can happen offline).
        if (System.getenv("RUST_FLAVOR") == null && System.getProperty("RUST_FLAVOR") == null) {
            System.setProperty("RUST_FLAVOR", "cpu");
        }
    }

    private final HuggingFaceTokenizer hf;
    private final TokenizerVocab vocab;
    private final TokenizerConfig config;
    private final int bosId, eosId, unkId, padId;

    private Tokenizer(HuggingFaceTokenizer hf, TokenizerVocab vocab, TokenizerConfig config, String source) {
        this.hf = hf;
        this.vocab = vocab;
        this.config = config;
        this.bosId = specialId(config.bosToken(), "bos_token", source);
        this.eosId = specialId(config.eosToken(), "eos_token", source);
        this.unkId = specialId(config.unkToken(), "unk_token", source);
        int pad = specialId(config.padToken(), "pad_token", source);
        if (pad < 0) {
            pad = eosId >= 0 ? eosId : Math.max(unkId, 0);
            if (PAD_HINT_SHOWN.compareAndSet(false, true)) {
                LOG.log(System.Logger.Level.INFO, source + " defines no pad_token; using "
                        + (eosId >= 0 ? "the eos token (id " + eosId + ")" : "id " + pad)
                        + " for padding, as transformers' generate() does. Padded positions are masked out.");
            }
        }
        this.padId = pad;
    }

    private int specialId(String token, String key, String source) {
        if (token == null) return -1;
        int id = vocab.id(token);
        if (id < 0) {
            throw new IllegalArgumentException(source + ": " + key + " '" + token + "' is not in tokenizer.json's"
                    + " vocabulary or added_tokens; fix tokenizer_config.json or use the model's own tokenizer files");
        }
        return id;
    }

    /**
     * Loads dir/tokenizer.json (required) and dir/tokenizer_config.json, dir/chat_template.jinja
     * (optional).
     */
    public static Tokenizer fromPretrained(Path dir) throws IOException {
        Path file = dir.resolve("tokenizer.json");
        if (!Files.isRegularFile(file)) {
            throw new NoSuchFileException(file.toString(), null, "tokenizer.json is missing from " + dir
                    + ": copy the model's tokenizer.json (the fast-tokenizer file transformers saves) into the folder;"
                    + " slow-only tokenizers (tokenizer.model alone) can be converted with"
                    + " AutoTokenizer.from_pretrained(...).save_pretrained(...)");
        }
        JsonNode json = new ObjectMapper().readTree(file.toFile());
        TokenizerVocab vocab = new TokenizerVocab(json, file.toString());
        TokenizerConfig config = TokenizerConfig.load(dir);
        HuggingFaceTokenizer hf = HuggingFaceTokenizer.builder()
                .optTokenizerPath(file)
                .optAddSpecialTokens(false)
                .optTruncation(false)
                .optPadding(false)
                .build();
        try {
            return new Tokenizer(hf, vocab, config, dir.resolve("tokenizer_config.json").toString());
        } catch (RuntimeException e) {
            hf.close();
            throw e;
        }
    }

    /** Token ids of text; addSpecialTokens adds BOS/EOS as transformers' tokenizer(text) does. */
    public int[] encode(String text, boolean addSpecialTokens) {
        boolean explicitFlags = config.addBosToken() != null || config.addEosToken() != null;
        if (!addSpecialTokens || !explicitFlags) {
            return toInts(hf.encode(text, addSpecialTokens, false).getIds());
        }
        long[] body = hf.encode(text, false, false).getIds();
        boolean bos = Boolean.TRUE.equals(config.addBosToken()) && bosId >= 0;
        boolean eos = Boolean.TRUE.equals(config.addEosToken()) && eosId >= 0;
        int[] out = new int[body.length + (bos ? 1 : 0) + (eos ? 1 : 0)];
        int k = 0;
        if (bos) out[k++] = bosId;
        for (long id : body) out[k++] = Math.toIntExact(id);
        if (eos) out[k] = eosId;
        return out;
    }

    /**
     * Ids plus the characters each token covers, e.g. to turn {@link RenderedChat} assistant spans
     * into a per-token training mask. Special tokens are added as {@link #encode} adds them.
     */
    public EncodedText encodeWithOffsets(String text, boolean addSpecialTokens) {
        boolean explicitFlags = config.addBosToken() != null || config.addEosToken() != null;
        Encoding e = hf.encode(text, addSpecialTokens && !explicitFlags, false);
        long[] ids = e.getIds();
        CharSpan[] spans = e.getCharTokenSpans();
        boolean bos = addSpecialTokens && explicitFlags && Boolean.TRUE.equals(config.addBosToken()) && bosId >= 0;
        boolean eos = addSpecialTokens && explicitFlags && Boolean.TRUE.equals(config.addEosToken()) && eosId >= 0;
        int n = ids.length + (bos ? 1 : 0) + (eos ? 1 : 0);
        int[] out = new int[n], start = new int[n], end = new int[n];
        java.util.Arrays.fill(start, -1);
        java.util.Arrays.fill(end, -1);
        int k = 0;
        if (bos) out[k++] = bosId;
        // the native library reports offsets in Unicode code points; Java strings index UTF-16 units
        boolean astral = text.codePoints().anyMatch(Character::isSupplementaryCodePoint);
        for (int i = 0; i < ids.length; i++, k++) {
            out[k] = Math.toIntExact(ids[i]);
            if (spans[i] != null) {
                start[k] = astral ? text.offsetByCodePoints(0, spans[i].getStart()) : spans[i].getStart();
                end[k] = astral ? text.offsetByCodePoints(0, spans[i].getEnd()) : spans[i].getEnd();
            }
        }
        if (eos) out[k] = eosId;
        return new EncodedText(out, start, end);
    }

    /** Text of ids; skipSpecialTokens drops tokens marked special (BOS, EOS, chat markers ...). */
    public String decode(int[] ids, boolean skipSpecialTokens) {
        long[] l = new long[ids.length];
        for (int i = 0; i < ids.length; i++) l[i] = ids[i];
        String text = hf.decode(l, skipSpecialTokens);
        return config.cleanUpTokenizationSpaces() ? cleanUpTokenization(text) : text;
    }

    /** transformers' clean_up_tokenization: removes spaces before punctuation and contractions. */
    static String cleanUpTokenization(String s) {
        return s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
                .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
                .replace(" 've", "'ve").replace(" 're", "'re");
    }

    /** A decoder for streaming output: feed ids one by one, get text as it becomes complete. */
    public StreamDecoder streamDecoder(boolean skipSpecialTokens) {
        return new StreamDecoder(this, skipSpecialTokens);
    }

    /** The BOS id, or -1 when the tokenizer has none. */
    public int bosTokenId() { return bosId; }

    /** The tokenizer's EOS id as a one-element array (empty when none). */
    public int[] eosTokenIds() { return eosId >= 0 ? new int[] {eosId} : new int[0]; }

    /** The pad id; without a pad token, EOS stands in (else UNK, else 0). Never fails. */
    public int padTokenId() { return padId; }

    /** True when tokenizer_config.json names a pad token (padTokenId() is not a stand-in). */
    public boolean hasPadToken() { return config.padToken() != null; }

    /** The UNK id, or -1. */
    public int unkTokenId() { return unkId; }

    /** Largest token id + 1 over the vocabulary and added tokens (transformers' len(tokenizer)). */
    public int vocabSize() { return vocab.size(); }

    /** The id of a token string (vocabulary or added token), or -1. */
    public int tokenToId(String token) { return vocab.id(token); }

    /** The raw token string of an id ("Ġhello", "▁the", "&lt;s&gt;"), as convert_ids_to_tokens; null if unknown. */
    public String tokenToString(int id) { return vocab.token(id); }

    /** tokenizer_config.json's settings. */
    public TokenizerConfig config() { return config; }

    /** The default chat template; fails with what to do when the model ships none. */
    public ChatTemplate chatTemplate() {
        return chatTemplate(TokenizerConfig.DEFAULT_TEMPLATE);
    }

    /** A named chat template (tokenizer_config.json's list form, or additional_chat_templates/NAME.jinja). */
    public ChatTemplate chatTemplate(String name) {
        String source = config.chatTemplates().get(name);
        if (source == null) {
            throw new IllegalStateException(config.chatTemplates().isEmpty()
                    ? "this tokenizer has no chat template (tokenizer_config.json has no \"chat_template\" and there"
                    + " is no chat_template.jinja): base models are prompted with plain text, or add the template of"
                    + " the instruct model you fine-tune from"
                    : "no chat template named '" + name + "'; available: " + config.chatTemplates().keySet());
        }
        return new ChatTemplate(source, config.bosToken(), config.eosToken(), config.unkToken(), config.padToken());
    }

    @Override
    public void close() {
        hf.close();
    }

    private static int[] toInts(long[] ids) {
        int[] out = new int[ids.length];
        for (int i = 0; i < ids.length; i++) out[i] = Math.toIntExact(ids[i]);
        return out;
    }
}
