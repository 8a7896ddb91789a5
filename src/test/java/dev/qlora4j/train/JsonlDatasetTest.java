package dev.qlora4j.train;

import dev.qlora4j.Golden;
import dev.qlora4j.io.tokenizer.Tokenizer;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The three formats through the golden Llama tokenizer (byte-level BPE, BOS added, no pad token: EOS pads). */
class JsonlDatasetTest {
    static Tokenizer tok;
    static int bos, eos;

    @BeforeAll
    static void load() throws IOException {
        tok = Tokenizer.fromPretrained(Golden.dir("llama-f32"));
        bos = tok.bosTokenId();
        eos = tok.eosTokenIds()[0];
    }

    @AfterAll
    static void close() {
        tok.close();
    }

    private static JsonlDataset data(int maxLen, String... lines) {
        return JsonlDataset.fromLines("train.jsonl", List.of(lines), new ExampleEncoder(tok, true, true), maxLen, null);
    }

    /** The ids whose label is trained, in order. */
    private static int[] trained(Example e) {
        return Arrays.stream(range(e.length())).filter(i -> e.labels()[i] != Example.IGNORE).map(i -> e.ids()[i]).toArray();
    }

    private static int[] range(int n) {
        int[] r = new int[n];
        for (int i = 0; i < n; i++) r[i] = i;
        return r;
    }

    @Test
    void textTrainsEveryTokenWithBosAndEos() {
        Example e = data(64, "{\"text\": \"In the beginning was the word\"}").examples().get(0);
        int[] body = tok.encode("In the beginning was the word", false);
        int[] expected = new int[body.length + 2];
        expected[0] = bos;
        System.arraycopy(body, 0, expected, 1, body.length);
        expected[expected.length - 1] = eos;
        assertArrayEquals(expected, e.ids());
        assertArrayEquals(e.ids(), e.labels());
        assertEquals(e.length() - 1, e.trainedTokens(), "every token after BOS is a target");
        assertEquals(1, e.line());
    }

    @Test
    void promptCompletionMasksThePrompt() {
        JsonlDataset d = data(64, "", "{\"prompt\": \"Question: who?\", \"completion\": \" Moses went up\"}");
        assertEquals(JsonlDataset.Format.PROMPT_COMPLETION, d.format());
        Example e = d.examples().get(0);
        assertEquals(2, e.line(), "blank lines are skipped but still counted");
        assertArrayEquals(tok.encode("Question: who? Moses went up", true), Arrays.copyOf(e.ids(), e.length() - 1));
        assertEquals(eos, e.ids()[e.length() - 1]);
        int promptTokens = tok.encode("Question: who?", true).length;
        for (int i = 0; i < promptTokens; i++) assertEquals(Example.IGNORE, e.labels()[i], "prompt token " + i);
        // what is trained decodes to the completion and the EOS
        assertEquals(" Moses went up</s>", tok.decode(trained(e), false));
    }

    @Test
    void completionOnlyLossOffTrainsThePromptToo() {
        JsonlDataset d = JsonlDataset.fromLines("t", List.of("{\"prompt\": \"a b\", \"completion\": \" c\"}"),
                new ExampleEncoder(tok, false, true), 64, null);
        Example e = d.examples().get(0);
        assertArrayEquals(e.ids(), e.labels());
    }

    @Test
    void messagesTrainOnlyAssistantTurns() {
        String line = "{\"messages\": [{\"role\": \"user\", \"content\": \"Who led them?\"}, {\"role\": \"assistant\", \"content\": \"Moses.\"},"
                + " {\"role\": \"user\", \"content\": \"And then?\"}, {\"role\": \"assistant\", \"content\": \"Joshua.\"}]}";
        Example e = data(256, line).examples().get(0);
        String rendered = "<|im_start|>user\nWho led them?<|im_end|>\n<|im_start|>assistant\nMoses.<|im_end|>\n"
                + "<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\nJoshua.<|im_end|>\n";
        assertArrayEquals(tok.encode(rendered, false), e.ids(), "the template's text, no BOS added (the template writes its own)");
        // trained: each assistant content plus the turn's closing <|im_end|>\n, nothing of the user turns
        List<String> runs = new ArrayList<>();
        StringBuilder cur = null;
        for (int i = 0; i < e.length(); i++) {
            if (e.labels()[i] != Example.IGNORE) {
                if (cur == null) cur = new StringBuilder();
                cur.append(tok.decode(new int[] {e.ids()[i]}, false));
            } else if (cur != null) {
                runs.add(cur.toString());
                cur = null;
            }
        }
        if (cur != null) runs.add(cur.toString());
        assertEquals(List.of("Moses.<|im_end|>\n", "Joshua.<|im_end|>\n"), runs);
    }

    @Test
    void truncationKeepsTheStart() {
        List<String> notes = new ArrayList<>();
        JsonlDataset d = JsonlDataset.fromLines("t", List.of("{\"text\": \"and God said let there be light and there was light\"}",
                "{\"text\": \"amen\"}"), new ExampleEncoder(tok, true, true), 5, notes::add);
        Example e = d.examples().get(0);
        assertEquals(5, e.length());
        int[] full = tok.encode("and God said let there be light and there was light", true);
        assertArrayEquals(Arrays.copyOf(full, 5), e.ids());
        assertEquals(1, d.truncated());
        assertEquals(1, notes.size());
        assertTrue(notes.get(0).contains("max_seq_length 5"), notes.get(0));
    }

    @Test
    void promptFillingMaxLengthIsAnErrorNamingTheLine() {
        var ex = assertThrows(IllegalArgumentException.class, () -> data(4,
                "{\"prompt\": \"a\", \"completion\": \" b\"}",
                "{\"prompt\": \"a very long prompt that fills everything\", \"completion\": \" b\"}"));
        assertTrue(ex.getMessage().contains("line(s) [2]") && ex.getMessage().contains("raise max_seq_length"), ex.getMessage());
    }

    @Test
    void chatWithoutAssistantTurnIsAnError() {
        var ex = assertThrows(IllegalArgumentException.class, () -> data(64,
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}"));
        assertTrue(ex.getMessage().contains("assistant"), ex.getMessage());
    }

    @Test
    void malformedLinesSayWhereAndWhat() {
        String m1 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"text\": \"a\"}", "{not json")).getMessage();
        assertTrue(m1.contains("train.jsonl line 2") && m1.contains("not valid JSON"), m1);
        String m2 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"text\": \"a\"}", "{\"prompt\": \"a\", \"completion\": \"b\"}")).getMessage();
        assertTrue(m2.contains("line 2") && m2.contains("line 1") && m2.contains("one format"), m2);
        String m3 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"input\": \"a\"}")).getMessage();
        assertTrue(m3.contains("line 1") && m3.contains("[input]") && m3.contains("\"text\""), m3);
        String m4 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"prompt\": \"a\"}")).getMessage();
        assertTrue(m4.contains("without \"completion\""), m4);
        String m5 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"text\": 5}")).getMessage();
        assertTrue(m5.contains("\"text\" must be a string"), m5);
        String m6 = assertThrows(IllegalArgumentException.class, () -> data(64, "{\"messages\": [{\"role\": \"user\"}]}")).getMessage();
        assertTrue(m6.contains("messages[0]"), m6);
        String m7 = assertThrows(IllegalArgumentException.class, () -> data(64, "[1, 2]")).getMessage();
        assertTrue(m7.contains("not a JSON object"), m7);
        String m8 = assertThrows(IllegalArgumentException.class, () -> data(64, "", "  ")).getMessage();
        assertTrue(m8.contains("has no examples"), m8);
    }

    @Test
    void fileLoadingReportsAMissingFile() {
        var ex = assertThrows(IllegalArgumentException.class, () -> JsonlDataset.load(java.nio.file.Path.of("no/such.jsonl"), tok, 64, true, true, null));
        assertTrue(ex.getMessage().contains("no/such.jsonl") && ex.getMessage().contains("does not exist"), ex.getMessage());
    }

    @Test
    void collatedRowsArePaddedWithMaskedTargetsAndTheirOwnSegment() {
        JsonlDataset d = data(64, "{\"text\": \"light\"}", "{\"text\": \"let there be light\"}");
        Example a = d.examples().get(0), b = d.examples().get(1);
        Batch batch = new Collator(tok.padTokenId()).collate(List.of(TrainRow.of(a), TrainRow.of(b)));
        int T = b.length();
        assertEquals(T, batch.seqLen());
        assertEquals(2, batch.batch());
        for (int t = 0; t < T; t++) {
            if (t < a.length()) {
                assertEquals(a.ids()[t], batch.ids()[t]);
                assertEquals(t, batch.positions()[t]);
                assertEquals(0, batch.segments()[t]);
                assertEquals(t + 1 < a.length() ? a.ids()[t + 1] : Example.IGNORE, batch.targets()[t]);
            } else {
                assertEquals(tok.padTokenId(), batch.ids()[t]);
                assertEquals(1, batch.segments()[t], "padding is its own segment");
                assertEquals(Example.IGNORE, batch.targets()[t]);
            }
            assertEquals(b.ids()[t], batch.ids()[T + t]);
            assertEquals(t + 1 < T ? b.ids()[t + 1] : Example.IGNORE, batch.targets()[T + t]);
        }
        assertEquals(a.trainedTokens() + b.trainedTokens(), batch.tokens());
        assertEquals(a.length() + b.length(), batch.inputTokens());
        // one unpadded row needs no segments at all
        assertEquals(null, new Collator(0).collate(List.of(TrainRow.of(b))).segments());
    }

    @Test
    void packedRowsRestartPositionsAndNeverPredictAcrossExamples() {
        JsonlDataset d = data(64, "{\"prompt\": \"a b\", \"completion\": \" c d\"}", "{\"prompt\": \"e\", \"completion\": \" f g h\"}",
                "{\"prompt\": \"i\", \"completion\": \"j\"}");
        List<TrainRow> rows = Packer.pack(d.examples(), 64);
        assertEquals(1, rows.size(), "all three fit one row");
        TrainRow row = rows.get(0);
        // best-fit decreasing: longest first
        for (int k = 1; k < row.parts().size(); k++) assertTrue(row.parts().get(k - 1).length() >= row.parts().get(k).length());
        Batch batch = new Collator(0).collate(rows);
        int at = 0;
        for (int k = 0; k < row.parts().size(); k++) {
            Example e = row.parts().get(k);
            for (int t = 0; t < e.length(); t++, at++) {
                assertEquals(t, batch.positions()[at]);
                assertEquals(k, batch.segments()[at]);
                assertEquals(t + 1 < e.length() ? e.labels()[t + 1] : Example.IGNORE, batch.targets()[at], "part " + k + " t " + t);
            }
        }
        assertEquals(at, batch.seqLen(), "no padding in a single row");
        assertEquals(d.trainedTokens(), batch.tokens());
    }

    @Test
    void bestFitDecreasingFillsRowsTightly() {
        List<Example> ex = new ArrayList<>();
        int[] lengths = {6, 5, 4, 3, 2, 2};
        for (int i = 0; i < lengths.length; i++) ex.add(Example.allTrained(new int[lengths[i]], i + 1));
        List<TrainRow> rows = Packer.pack(ex, 8);
        // 6+2, 5+3, 4+2: three full-ish rows, deterministic
        assertEquals(3, rows.size());
        assertEquals(List.of(6, 2), rows.get(0).parts().stream().map(Example::length).toList());
        assertEquals(List.of(5, 3), rows.get(1).parts().stream().map(Example::length).toList());
        assertEquals(List.of(4, 2), rows.get(2).parts().stream().map(Example::length).toList());
        assertFalse(rows.stream().anyMatch(r -> r.length() > 8));
    }
}
