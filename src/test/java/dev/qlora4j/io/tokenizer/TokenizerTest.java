package dev.qlora4j.io.tokenizer;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A hand-written byte-level BPE tokenizer.json (GPT-2 byte alphabet: ' ' is 'Ġ', 'é' is the two
 * byte symbols 'Ã' '©') with a TemplateProcessing post-processor that adds &lt;s&gt;, as Llama's does.
 */
class TokenizerTest {
    static final String TOKENIZER_JSON = """
            {
              "version": "1.0", "truncation": null, "padding": null,
              "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
              ],
              "normalizer": null,
              "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
              "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
              },
              "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
              "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "h": 3, "e": 4, "l": 5, "o": 6, "Ġ": 7, "w": 8, "r": 9,
                          "d": 10, "he": 11, "ll": 12, "hell": 13, "hello": 14, "Ġw": 15, "or": 16, "Ġwor": 17,
                          "Ġworl": 18, "Ġworld": 19, "Ã": 20, "©": 21, "!": 22},
                "merges": ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
              }
            }""";

    static final String TOKENIZER_CONFIG = """
            {
              "add_bos_token": true, "add_eos_token": false,
              "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false,
                            "rstrip": false, "single_word": false},
              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": null,
              "clean_up_tokenization_spaces": false, "model_max_length": 1000000000000000019884624838656,
              "chat_template": "{% for m in messages %}{{ bos_token + m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}",
              "tokenizer_class": "LlamaTokenizer"
            }""";

    @TempDir
    static Path dir;
    static Tokenizer tok;

    static Path write(Path d, String config) throws IOException {
        Files.createDirectories(d);
        Files.writeString(d.resolve("tokenizer.json"), TOKENIZER_JSON);
        if (config != null) Files.writeString(d.resolve("tokenizer_config.json"), config);
        return d;
    }

    @BeforeAll
    static void load() throws IOException {
        tok = Tokenizer.fromPretrained(write(dir.resolve("llama"), TOKENIZER_CONFIG));
    }

    @AfterAll
    static void close() {
        tok.close();
    }

    @Test
    void encodeLikeTransformers() {
        assertArrayEquals(new int[] {14, 19}, tok.encode("hello world", false));
        assertArrayEquals(new int[] {1, 14, 19}, tok.encode("hello world", true), "tokenizer(text) prepends <s>");
        assertArrayEquals(new int[] {14, 22, 7, 20, 21}, tok.encode("hello! é", false));
        assertArrayEquals(new int[] {1, 14, 2}, tok.encode("<s>hello</s>", false), "special tokens in text stay whole");
        String longText = "hello ".repeat(600).trim();
        // "hello" then 599 x " hello" = 'Ġ' + 'hello' (no "Ġhello" in the vocab): 1 + 2 * 599 tokens
        assertEquals(1199, tok.encode(longText, false).length, "no truncation to DJL's default 512");
        assertArrayEquals(new int[0], tok.encode("", false));
    }

    @Test
    void postProcessorDecidesWhenConfigHasNoFlags(@TempDir Path d) throws IOException {
        try (Tokenizer t = Tokenizer.fromPretrained(write(d, null))) {
            assertArrayEquals(new int[] {1, 14, 19}, t.encode("hello world", true));
            assertArrayEquals(new int[] {14, 19}, t.encode("hello world", false));
            assertEquals(-1, t.bosTokenId(), "no tokenizer_config.json: no named bos token");
            assertEquals(0, t.padTokenId(), "no pad, no eos, no unk: 0");
            assertThrows(IllegalStateException.class, t::chatTemplate);
        }
    }

    @Test
    void explicitFlagsOverrideThePostProcessor(@TempDir Path d) throws IOException {
        String cfg = TOKENIZER_CONFIG.replace("\"add_bos_token\": true, \"add_eos_token\": false",
                "\"add_bos_token\": false, \"add_eos_token\": true");
        try (Tokenizer t = Tokenizer.fromPretrained(write(d, cfg))) {
            assertArrayEquals(new int[] {14, 19, 2}, t.encode("hello world", true));
        }
    }

    @Test
    void decode() {
        assertEquals("hello world", tok.decode(new int[] {1, 14, 19}, true));
        assertEquals("<s>hello world</s>", tok.decode(new int[] {1, 14, 19, 2}, false));
        assertEquals("hello! é", tok.decode(new int[] {14, 22, 7, 20, 21}, true));
    }

    @Test
    void specialTokensAndPadFallback() {
        assertEquals(1, tok.bosTokenId());
        assertArrayEquals(new int[] {2}, tok.eosTokenIds());
        assertEquals(0, tok.unkTokenId());
        assertFalse(tok.hasPadToken());
        assertEquals(2, tok.padTokenId(), "no pad token: eos stands in");
        assertEquals(23, tok.vocabSize());
        assertEquals("Ġworld", tok.tokenToString(19));
        assertEquals("<s>", tok.tokenToString(1));
        assertNull(tok.tokenToString(99));
        assertEquals(14, tok.tokenToId("hello"));
        assertEquals(-1, tok.tokenToId("nope"));
        assertEquals(1000000000000000019884624838656.0 >= Long.MAX_VALUE ? Long.MAX_VALUE : 0,
                tok.config().modelMaxLength());
    }

    @Test
    void explicitPadToken(@TempDir Path d) throws IOException {
        try (Tokenizer t = Tokenizer.fromPretrained(write(d, TOKENIZER_CONFIG.replace("\"pad_token\": null",
                "\"pad_token\": \"<unk>\"")))) {
            assertTrue(t.hasPadToken());
            assertEquals(0, t.padTokenId());
        }
    }

    @Test
    void unknownSpecialTokenIsAClearError(@TempDir Path d) {
        var e = assertThrows(IllegalArgumentException.class, () -> Tokenizer.fromPretrained(
                write(d, TOKENIZER_CONFIG.replace("\"eos_token\": \"</s>\"", "\"eos_token\": \"<|end|>\""))));
        assertTrue(e.getMessage().contains("eos_token '<|end|>'"), e.getMessage());
    }

    @Test
    void streamingHoldsBackIncompleteCharacters() {
        StreamDecoder s = tok.streamDecoder(true);
        assertEquals("hello", s.push(14));
        assertEquals(" ", s.push(7));
        assertEquals("", s.push(20), "half of 'é' is not emitted");
        assertEquals("é", s.push(21));
        assertEquals("!", s.push(22));
        assertEquals("", s.push(2), "skipped special token adds nothing");
        assertEquals("", s.flush());

        StreamDecoder t = tok.streamDecoder(true);
        assertEquals("hello world", t.push(14, 19));
        assertEquals("", t.push(20));
        assertEquals("\uFFFD", t.flush(), "flush emits what is held back");
    }

    /**
     * On random id sequences of real byte-level tokenizers (the golden models' and the embedded default model's: byte
     * tokens that split characters, special tokens), the streamed text after each token is the start of the whole decode
     * of the ids so far, all of it unless that ends in an incomplete character, and with the flush it is the whole
     * decode.
     */
    @Test
    void streamingRandomIdsGivesTheWholeDecode() throws Exception {
        java.util.Random rnd = new java.util.Random(7);
        for (Path dir : new Path[] {dev.qlora4j.Golden.dir("llama-f32"), Path.of("models/default")}) {
            try (Tokenizer t = Tokenizer.fromPretrained(dir)) {
                for (int trial = 0; trial < 20; trial++) {
                    int n = 1 + rnd.nextInt(60);
                    int[] ids = rnd.ints(n, 0, t.vocabSize()).toArray();
                    StreamDecoder s = t.streamDecoder(true);
                    StringBuilder sb = new StringBuilder();
                    for (int i = 0; i < n; i++) {
                        sb.append(s.push(ids[i]));
                        String whole = t.decode(java.util.Arrays.copyOf(ids, i + 1), true);
                        String where = dir + " ids " + java.util.Arrays.toString(java.util.Arrays.copyOf(ids, i + 1));
                        assertTrue(whole.startsWith(sb.toString()), where);
                        assertTrue(whole.length() == sb.length() || whole.endsWith("\uFFFD"), where + ": held back "
                                + whole.substring(sb.length()));
                    }
                    sb.append(s.flush());
                    assertEquals(t.decode(ids, true), sb.toString());
                }
            }
        }
    }

    @Test
    void streamedTextEqualsFullDecode() {
        int[] ids = {14, 19, 22, 7, 20, 21, 7, 14, 22};
        StreamDecoder s = tok.streamDecoder(false);
        StringBuilder sb = new StringBuilder();
        for (int id : ids) sb.append(s.push(id));
        sb.append(s.flush());
        assertEquals(tok.decode(ids, false), sb.toString());
        assertEquals("hello world! é hello!", sb.toString());
    }

    @Test
    void chatTemplateFromConfigAndJinjaFileWins(@TempDir Path d) throws IOException {
        ChatTemplate fromConfig = tok.chatTemplate();
        assertEquals("<s>user: hi</s>", fromConfig.render(List.of(ChatMessage.user("hi")), false));
        write(d, TOKENIZER_CONFIG);
        Files.writeString(d.resolve("chat_template.jinja"), "{% for m in messages %}[{{ m.content }}]{% endfor %}\n");
        Files.createDirectories(d.resolve("additional_chat_templates"));
        Files.writeString(d.resolve("additional_chat_templates/tool_use.jinja"), "tools:{{ messages|length }}");
        try (Tokenizer t = Tokenizer.fromPretrained(d)) {
            assertEquals("[hi]", t.chatTemplate().render(List.of(ChatMessage.user("hi")), false));
            assertEquals("tools:1", t.chatTemplate("tool_use").render(List.of(ChatMessage.user("hi")), false));
            var e = assertThrows(IllegalStateException.class, () -> t.chatTemplate("rag"));
            assertTrue(e.getMessage().contains("tool_use"), e.getMessage());
        }
    }

    @Test
    void namedTemplatesInConfigList() {
        TokenizerConfig c = TokenizerConfig.parse("""
                {"chat_template": [{"name": "default", "template": "A"}, {"name": "rag", "template": "B"}]}""", "t");
        assertEquals("A", c.chatTemplates().get("default"));
        assertEquals("B", c.chatTemplates().get("rag"));
        var e = assertThrows(IllegalArgumentException.class,
                () -> TokenizerConfig.parse("{\"chat_template\": [{\"name\": \"x\"}]}", "tokenizer_config.json"));
        assertTrue(e.getMessage().contains("\"name\" and \"template\""), e.getMessage());
    }

    @Test
    void missingTokenizerJsonNamesTheFile(@TempDir Path d) {
        var e = assertThrows(NoSuchFileException.class, () -> Tokenizer.fromPretrained(d));
        assertTrue(e.getMessage().contains("tokenizer.json"), e.getMessage());
    }

    @Test
    void offsetsMapTokensToCharacters() {
        EncodedText e = tok.encodeWithOffsets("é hello<s>world", true);
        assertArrayEquals(new int[] {1, 20, 21, 7, 14, 1, 8, 16, 5, 10}, e.ids());
        assertArrayEquals(new int[] {-1, 0, 0, 1, 2, 7, 10, 11, 13, 14}, e.charStart());
        assertArrayEquals(new int[] {-1, 1, 1, 2, 7, 10, 11, 13, 14, 15}, e.charEnd());
        // an emoji is two UTF-16 units: offsets after it are shifted accordingly
        EncodedText astral = tok.encodeWithOffsets("\uD83D\uDE00 hello", false);
        int last = astral.ids().length - 1;
        assertEquals(14, astral.ids()[last]);
        assertEquals("hello", "\uD83D\uDE00 hello".substring(astral.charStart()[last], astral.charEnd()[last]));
    }

    @Test
    void assistantMaskFromChatSpans() {
        ChatTemplate t = new ChatTemplate("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                + "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}", "<s>", "</s>",
                null, null);
        RenderedChat chat = t.renderWithAssistantSpans(List.of(ChatMessage.user("hello"), ChatMessage.assistant(" world")));
        assertEquals("hello world</s>", chat.text());
        EncodedText e = tok.encodeWithOffsets(chat.text(), true);
        assertArrayEquals(new int[] {1, 14, 19, 2}, e.ids());
        boolean[] mask = e.tokensIn(chat.assistantSpans());
        assertArrayEquals(new boolean[] {false, false, true, true}, mask);
    }

    @Test
    void cleanUpTokenizationSpaces() {
        assertEquals("Hello, world. It's fine!", Tokenizer.cleanUpTokenization("Hello , world . It 's fine !"));
    }
}
