package dev.qlora4j.infer.metrics;

import dev.qlora4j.io.tokenizer.ChatMessage;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class GenerationDatasetTest {
    @Test
    void readsPromptReferenceCompletionAndChatLines(@TempDir Path tmp) throws Exception {
        Path f = tmp.resolve("d.jsonl");
        Files.writeString(f, """
                {"prompt": "2+2=", "reference": "4"}

                {"prompt": "Name a colour:", "reference": ["red", "", "blue"]}
                {"prompt": "Q", "completion": " A"}
                {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
                """);
        List<GenerationExample> ex = GenerationDataset.read(f);
        assertEquals(4, ex.size());
        assertEquals(new GenerationExample(1, "2+2=", null, List.of("4")), ex.get(0));
        assertEquals(List.of("red", "blue"), ex.get(1).references(), "empty references are dropped, as sacreBLEU does");
        assertEquals(3, ex.get(1).line());
        assertEquals(List.of(" A"), ex.get(2).references());
        GenerationExample chat = ex.get(3);
        assertTrue(chat.isChat());
        assertNull(chat.prompt());
        assertEquals(List.of(ChatMessage.system("Be brief."), ChatMessage.user("Hi")), chat.history());
        assertEquals(List.of("Hello."), chat.references());
        assertFalse(ex.get(0).isChat());
    }

    @Test
    void badLinesNameTheLineAndTheFix() {
        assertMessage("{\"text\": \"x\"}", "needs {\"prompt\"");
        assertMessage("{\"prompt\": \"x\"}", "no \"reference\"");
        assertMessage("{\"prompt\": \"x\", \"reference\": \"\"}", "reference is empty");
        assertMessage("{\"prompt\": \"x\", \"reference\": 3}", "string or a list");
        assertMessage("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}",
                "must be the assistant's reference");
        assertMessage("{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}]}", "at least two");
        assertMessage("{\"messages\": [{\"role\": \"user\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}", "messages[0]");
        assertMessage("not json", "not valid JSON");
    }

    private static void assertMessage(String line, String expected) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> GenerationDataset.parse(line, "d.jsonl line 7", 7));
        assertTrue(e.getMessage().startsWith("d.jsonl line 7"), e.getMessage());
        assertTrue(e.getMessage().contains(expected), e.getMessage());
    }

    @Test
    void missingOrEmptyFile(@TempDir Path tmp) throws Exception {
        assertThrows(IllegalArgumentException.class, () -> GenerationDataset.read(tmp.resolve("none.jsonl")));
        Path empty = Files.writeString(tmp.resolve("e.jsonl"), "\n\n");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> GenerationDataset.read(empty));
        assertTrue(e.getMessage().contains("no examples"), e.getMessage());
    }

    @Test
    void exactMatchStripsWhitespaceOnly() {
        assertTrue(ExampleResult.matches("  Paris\n", List.of("Paris")));
        assertTrue(ExampleResult.matches("\u00a0b", List.of("a", " b ")));
        assertFalse(ExampleResult.matches("paris", List.of("Paris")));
        assertFalse(ExampleResult.matches("Paris.", List.of("Paris")));
    }
}
