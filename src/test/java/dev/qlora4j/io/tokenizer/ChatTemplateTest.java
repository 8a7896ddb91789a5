package dev.qlora4j.io.tokenizer;

import org.junit.jupiter.api.Test;

import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static dev.qlora4j.io.tokenizer.ChatMessage.assistant;
import static dev.qlora4j.io.tokenizer.ChatMessage.system;
import static dev.qlora4j.io.tokenizer.ChatMessage.user;
import static org.junit.jupiter.api.Assertions.*;

/** Expected outputs are worked out by hand from Jinja2 semantics with trim_blocks and lstrip_blocks. */
class ChatTemplateTest {

    /** Meta-Llama-3-Instruct's template; the JSON "\n" escapes are real newlines inside the string literals. */
    static final String LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}"
            + "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
            + "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
            + "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    /** Qwen2's ChatML template; here "\\n" is a Jinja escape inside the literal. */
    static final String CHATML = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            + "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
            + "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /** Mistral-Instruct style: alternation enforced with raise_exception. */
    static final String MISTRAL = "{{ bos_token }}{% for message in messages %}"
            + "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            + "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
            + "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
            + "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
            + "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    /** Zephyr: one construct per line, so trim_blocks / lstrip_blocks shape the output. */
    static final String ZEPHYR = """
            {% for message in messages %}
            {% if message['role'] == 'user' %}
            {{ '<|user|>\\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'system' %}
            {{ '<|system|>\\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'assistant' %}
            {{ '<|assistant|>\\n'  + message['content'] + eos_token }}
            {% endif %}
            {% if loop.last and add_generation_prompt %}
            {{ '<|assistant|>' }}
            {% endif %}
            {% endfor %}
            """;

    /** ChatML with transformers' {% generation %} markers around assistant content. */
    static final String CHATML_GENERATION = """
            {%- for message in messages %}
                {{- '<|im_start|>' + message['role'] + '\\n' }}
                {%- if message['role'] == 'assistant' %}
                    {%- generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}
                {%- else %}
                    {{- message['content'] + '<|im_end|>' }}
                {%- endif %}
                {{- '\\n' }}
            {%- endfor %}
            {%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
            """;

    static ChatTemplate template(String source) {
        return new ChatTemplate(source, "<s>", "</s>", "<unk>", null);
    }

    @Test
    void llama3() {
        ChatTemplate t = new ChatTemplate(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", null, null);
        List<ChatMessage> chat = List.of(system("You are helpful."), user(" Hi\n"), assistant(" Hello! "));
        String full = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                + "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>";
        assertEquals(full, t.render(chat, false));
        assertEquals("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
                        + "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                        + "<|start_header_id|>assistant<|end_header_id|>\n\n",
                t.render(chat.subList(0, 2), true));
        RenderedChat r = t.renderWithAssistantSpans(chat);
        assertEquals(full, r.text());
        assertEquals(List.of("Hello!<|eot_id|>"), r.assistantTexts());
    }

    @Test
    void chatmlAddsDefaultSystemPrompt() {
        ChatTemplate t = template(CHATML);
        List<ChatMessage> chat = List.of(user("Hi"), assistant("Hello"), user("2+2?"), assistant("4"));
        String full = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                + "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n";
        assertEquals(full, t.render(chat, false));
        assertEquals("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                + "<|im_start|>assistant\n", t.render(chat.subList(0, 1), true));
        assertEquals("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
                t.render(List.of(system("Be brief."), user("Hi")), false));
        RenderedChat r = t.renderWithAssistantSpans(chat);
        assertEquals(List.of("Hello<|im_end|>\n", "4<|im_end|>\n"), r.assistantTexts());
        assertEquals(full.indexOf("Hello<|im_end|>"), r.assistantSpans().get(0).start());
    }

    @Test
    void mistralAndRaiseException() {
        ChatTemplate t = template(MISTRAL);
        List<ChatMessage> chat = List.of(user("Hi"), assistant("Hello"), user("Bye"));
        assertEquals("<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]", t.render(chat, true));
        assertEquals(List.of("Hello</s>"), t.renderWithAssistantSpans(chat.subList(0, 2)).assistantTexts());
        var e = assertThrows(IllegalArgumentException.class, () -> t.render(List.of(assistant("x")), false));
        assertTrue(e.getMessage().contains("Conversation roles must alternate user/assistant/user/assistant/..."),
                e.getMessage());
        var sys = assertThrows(IllegalArgumentException.class, () -> t.render(List.of(system("x")), false));
        assertTrue(sys.getMessage().contains("Conversation roles must alternate"), sys.getMessage());
    }

    @Test
    void zephyrWhitespaceFollowsTrimAndLstripBlocks() {
        ChatTemplate t = template(ZEPHYR);
        assertEquals("<|system|>\nSys</s>\n<|user|>\nHi</s>\n<|assistant|>\n",
                t.render(List.of(system("Sys"), user("Hi")), true));
        List<ChatMessage> chat = List.of(user("Hi"), assistant("Hello"));
        assertEquals("<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n", t.render(chat, false));
        assertEquals(List.of("Hello</s>\n"), t.renderWithAssistantSpans(chat).assistantTexts());
    }

    @Test
    void generationMarkersGiveExactSpans() {
        ChatTemplate t = template(CHATML_GENERATION);
        assertTrue(t.hasGenerationMarkers());
        assertFalse(template(CHATML).hasGenerationMarkers());
        List<ChatMessage> chat = List.of(user("Hi"), assistant("Hello"), user("Q"), assistant("A"));
        String full = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                + "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n";
        assertEquals(full, t.render(chat, false));
        RenderedChat r = t.renderWithAssistantSpans(chat);
        assertEquals(full, r.text());
        assertEquals(List.of("Hello<|im_end|>", "A<|im_end|>"), r.assistantTexts());
        assertEquals(new RenderedChat.Span(full.indexOf("Hello"), full.indexOf("Hello") + 15), r.assistantSpans().get(0));
        assertEquals("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", t.render(chat.subList(0, 1), true));
    }

    @Test
    void pythonStringMethods() {
        ChatTemplate t = template("{{ messages[0]['content'].strip() }}|{{ messages[0].content.lstrip() }}|"
                + "{{ messages[0].content.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' x  y '.split() }}|"
                + "{% if '<think>'.startswith('<') and not 'ab'.endswith('x') %}yes{% endif %}|{{ 'abc'.upper() }}|"
                + "{{ '-'.join(['a', 'b']) }}|{{ 'hello world'.title() }}|{{ 'xxhixx'.strip('x') }}|"
                + "{{ 'a</think>b'.split('</think>')[-1] }}|{{ 'A-B-C'.rsplit('-', 1) }}|{{ 'aaa'.replace('a', 'b', 2) }}");
        assertEquals("hi|hi  |  hi|['a', 'b', '', 'c']|['x', 'y']|yes|ABC|a-b|Hello World|hi|b|['A-B', 'C']|bba",
                t.render(List.of(user("  hi  ")), false));
    }

    @Test
    void toJsonLikePython() {
        Map<String, Object> fn = new LinkedHashMap<>();
        fn.put("name", "get_weather");
        fn.put("parameters", Map.of());
        Map<String, Object> tool = new LinkedHashMap<>();
        tool.put("type", "function");
        tool.put("function", fn);
        ChatTemplate t = template("{{ tools | tojson }}|{{ 'é\"\\n' | tojson }}|{{ {'a': [1, 2]} | tojson(indent=2) }}");
        assertEquals("[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {}}}]"
                        + "|\"é\\\"\\n\"|{\n  \"a\": [\n    1,\n    2\n  ]\n}",
                t.render(List.of(), false, Map.of("tools", List.of(tool))));
    }

    @Test
    void dictIterationNamespaceAndTrailingNewline() {
        ChatTemplate t = template("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                + "{% endfor %}{{ ns.n }}{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}"
                + "{{ messages[-1]['role'] }}{{ undefined_variable }}{{- '  end' -}}   \n");
        assertEquals("2xyuser  end", t.render(List.of(system("a"), user("b")), false));
    }

    @Test
    void strftime() {
        ZonedDateTime d = ZonedDateTime.of(2024, 7, 26, 9, 5, 3, 0, ZoneOffset.UTC);
        assertEquals("26 Jul 2024", TemplateFunctions.strftime(d, "%d %b %Y"));
        assertEquals("2024-07-26 09:05:03 Friday %", TemplateFunctions.strftime(d, "%Y-%m-%d %H:%M:%S %A %%"));
        String today = template("{{ strftime_now('%Y') }}").render(List.of(), false);
        assertEquals(String.valueOf(java.time.Year.now().getValue()), today);
    }

    @Test
    void unknownSyntaxFailsLoudly() {
        var e = assertThrows(IllegalArgumentException.class, () -> template("{% frobnicate %}").render(List.of(), false));
        assertTrue(e.getMessage().contains("chat template error"), e.getMessage());
    }
}
