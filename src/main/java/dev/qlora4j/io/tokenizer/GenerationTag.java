package dev.qlora4j.io.tokenizer;

import com.hubspot.jinjava.interpret.JinjavaInterpreter;
import com.hubspot.jinjava.lib.tag.Tag;
import com.hubspot.jinjava.tree.Node;
import com.hubspot.jinjava.tree.TagNode;

/**
 * transformers' {@code {% generation %}...{% endgeneration %}} extension: marks the text an
 * assistant generates. The body is rendered as is, wrapped in two private-use characters that
 * {@link ChatTemplate} removes after rendering, recording where they were.
 */
final class GenerationTag implements Tag {
    static final char START = '\uE000';
    static final char END = '\uE001';

    @Override
    public String getName() {
        return "generation";
    }

    @Override
    public String getEndTagName() {
        return "endgeneration";
    }

    @Override
    public String interpret(TagNode tagNode, JinjavaInterpreter interpreter) {
        StringBuilder sb = new StringBuilder().append(START);
        for (Node child : tagNode.getChildren()) sb.append(child.render(interpreter).getValue());
        return sb.append(END).toString();
    }
}
