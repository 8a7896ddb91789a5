package dev.qlora4j.io.tokenizer;

import com.hubspot.jinjava.Jinjava;
import com.hubspot.jinjava.JinjavaConfig;
import com.hubspot.jinjava.LegacyOverrides;
import com.hubspot.jinjava.interpret.RenderResult;
import com.hubspot.jinjava.interpret.TemplateError;
import com.hubspot.jinjava.el.JinjavaInterpreterResolver;
import com.hubspot.jinjava.lib.fn.ELFunctionDefinition;
import jinjava.javax.el.CompositeELResolver;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A Hugging Face chat template (Jinja) rendered as transformers' apply_chat_template renders it:
 * trim_blocks and lstrip_blocks on, a single trailing newline of the template dropped
 * (Jinja2's keep_trailing_newline=False), variables messages / add_generation_prompt /
 * bos_token / eos_token / unk_token / pad_token, functions raise_exception and strftime_now,
 * Python string methods (.strip(), .startswith() ...), Python-style tojson, iteration over a
 * dict's keys, and the {% generation %} tag.
 *
 * <p>The engine is Jinjava, set up for Jinja2 semantics (natural operator precedence, strict
 * whitespace control, Python-like printing of lists and dicts). Templates beyond what Jinjava
 * supports fail with a message naming the construct rather than render differently.
 */
public final class ChatTemplate {
    private final String source;
    private final Map<String, Object> specialTokens = new HashMap<>();
    private final Jinjava jinjava;

    /** @param bosToken etc.: the special token strings the template may use; nullable. */
    public ChatTemplate(String source, String bosToken, String eosToken, String unkToken, String padToken) {
        // Jinja2 (keep_trailing_newline=False) drops one newline at the end of the template
        this.source = source.endsWith("\r\n") ? source.substring(0, source.length() - 2)
                : source.endsWith("\n") ? source.substring(0, source.length() - 1) : source;
        putIfPresent("bos_token", bosToken);
        putIfPresent("eos_token", eosToken);
        putIfPresent("unk_token", unkToken);
        putIfPresent("pad_token", padToken);
        this.jinjava = newEngine();
    }

    private void putIfPresent(String key, String value) {
        if (value != null) specialTokens.put(key, value);
    }

    private static Jinjava newEngine() {
        CompositeELResolver resolver = new CompositeELResolver();
        resolver.add(new PythonStringMethods());
        resolver.add(JinjavaInterpreterResolver.DEFAULT_RESOLVER_READ_ONLY);
        JinjavaConfig config = JinjavaConfig.newBuilder()
                .withTrimBlocks(true)
                .withLstripBlocks(true)
                .withElResolver(resolver)
                .withLegacyOverrides(LegacyOverrides.newBuilder()
                        .withIterateOverMapKeys(true)
                        .withEvaluateMapKeys(true)
                        .withUseNaturalOperatorPrecedence(true)
                        .withParseWhitespaceControlStrictly(true)
                        .withUseTrimmingForNotesAndExpressions(true)
                        .withUsePyishObjectMapper(true)
                        .withKeepNullableLoopValues(true)
                        .build())
                .build();
        Jinjava j = new Jinjava(config);
        j.getGlobalContext().registerTag(new GenerationTag());
        j.getGlobalContext().registerFilter(new PythonJsonFilter());
        j.getGlobalContext().registerFunction(new ELFunctionDefinition("", "raise_exception",
                TemplateFunctions.class, "raiseException", Object.class));
        j.getGlobalContext().registerFunction(new ELFunctionDefinition("", "strftime_now",
                TemplateFunctions.class, "strftimeNow", String.class));
        return j;
    }

    /** The template source (after dropping its trailing newline). */
    public String source() {
        return source;
    }

    /** True when the template marks assistant text with {% generation %}. */
    public boolean hasGenerationMarkers() {
        return source.matches("(?s).*\\{%-?\\s*generation\\s*-?%}.*");
    }

    /** Renders messages; addGenerationPrompt appends the assistant header the model continues from. */
    public String render(List<ChatMessage> messages, boolean addGenerationPrompt) {
        return render(messages, addGenerationPrompt, Map.of());
    }

    /** As {@link #render(List, boolean)} with further template variables (tools, documents, custom flags). */
    public String render(List<ChatMessage> messages, boolean addGenerationPrompt, Map<String, ?> variables) {
        return stripMarkers(renderRaw(messages, addGenerationPrompt, variables), null);
    }

    /**
     * Renders a whole conversation for training (no generation prompt) and finds the characters of
     * each assistant turn.
     *
     * <p>With {% generation %} markers the spans are exactly the marked text, as transformers'
     * return_assistant_tokens_mask uses them. Without markers, each assistant message i is located
     * by rendering prefixes: the text of messages[:i] with the generation prompt ends where the
     * assistant's turn begins, and the text of messages[:i+1] ends where it ends, so the span holds
     * the content and whatever the template closes the turn with (end-of-turn token, EOS), which a
     * model must learn to produce. This needs prefix-stable templates (rendering a prefix of the
     * conversation gives a prefix of the text); when a template is not (some rewrite earlier turns),
     * an exception says so and suggests adding {% generation %} markers.
     */
    public RenderedChat renderWithAssistantSpans(List<ChatMessage> messages, Map<String, ?> variables) {
        String raw = renderRaw(messages, false, variables);
        if (raw.indexOf(GenerationTag.START) >= 0) {
            List<RenderedChat.Span> spans = new ArrayList<>();
            String text = stripMarkers(raw, spans);
            return new RenderedChat(text, spans);
        }
        String text = raw;
        List<RenderedChat.Span> spans = new ArrayList<>();
        for (int i = 0; i < messages.size(); i++) {
            if (!messages.get(i).role().equals("assistant")) continue;
            String before = stripMarkers(renderRaw(messages.subList(0, i), true, variables), null);
            String through = stripMarkers(renderRaw(messages.subList(0, i + 1), false, variables), null);
            if (!text.startsWith(before) || !text.startsWith(through) || through.length() < before.length()) {
                throw new IllegalStateException("cannot locate assistant message " + i + " in the rendered chat:"
                        + " this chat template renders a conversation prefix differently from the start of the whole"
                        + " conversation. Wrap the assistant content of the template in {% generation %}..."
                        + "{% endgeneration %} to mark it explicitly");
            }
            spans.add(new RenderedChat.Span(before.length(), through.length()));
        }
        return new RenderedChat(text, spans);
    }

    /** {@link #renderWithAssistantSpans(List, Map)} without extra variables. */
    public RenderedChat renderWithAssistantSpans(List<ChatMessage> messages) {
        return renderWithAssistantSpans(messages, Map.of());
    }

    private String renderRaw(List<ChatMessage> messages, boolean addGenerationPrompt, Map<String, ?> variables) {
        Map<String, Object> ctx = new HashMap<>(specialTokens);
        ctx.putAll(variables);
        List<Map<String, Object>> msgs = new ArrayList<>(messages.size());
        for (ChatMessage m : messages) msgs.add(m.toTemplateMap());
        ctx.put("messages", msgs);
        ctx.put("add_generation_prompt", addGenerationPrompt);
        RenderResult r = jinjava.renderForResult(source, ctx);
        for (TemplateError e : r.getErrors()) {
            if (e.getSeverity() != TemplateError.ErrorType.FATAL) continue;
            for (Throwable t = e.getException(); t != null; t = t.getCause()) {
                if (t instanceof TemplateFunctions.TemplateRaisedException raised) {
                    throw new IllegalArgumentException("the chat template rejected the messages: " + raised.getMessage(), raised);
                }
            }
            throw new IllegalArgumentException("chat template error at line " + e.getLineno() + ": " + e.getMessage());
        }
        return r.getOutput();
    }

    /** Removes generation markers; when spans is non-null, records the marked ranges of the result. */
    private static String stripMarkers(String raw, List<RenderedChat.Span> spans) {
        if (raw.indexOf(GenerationTag.START) < 0 && raw.indexOf(GenerationTag.END) < 0) return raw;
        StringBuilder sb = new StringBuilder(raw.length());
        int open = -1;
        for (int i = 0; i < raw.length(); i++) {
            char c = raw.charAt(i);
            if (c == GenerationTag.START) {
                open = sb.length();
            } else if (c == GenerationTag.END) {
                if (spans != null && open >= 0 && sb.length() > open) spans.add(new RenderedChat.Span(open, sb.length()));
                open = -1;
            } else {
                sb.append(c);
            }
        }
        return sb.toString();
    }
}
