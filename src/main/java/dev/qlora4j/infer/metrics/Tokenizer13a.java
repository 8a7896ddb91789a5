package dev.qlora4j.infer.metrics;

import java.util.regex.Pattern;

/**
 * sacreBLEU's default BLEU tokenizer "13a", the tokenization of WMT's mteval-v13a.pl: a few
 * SGML-isms are undone, then punctuation and symbols are split off (a period or comma only when
 * it is not between digits, a dash only after a digit), and whitespace is collapsed to single
 * spaces. Letters, digits, apostrophes and dashes inside words stay together ("wasn't",
 * "state-of-the-art", "3.14", "1,000").
 */
public final class Tokenizer13a {
    // Symbols split off everywhere: { | } ~  [ \ ] ^ _ `  space ! " # $ % &  ( ) * +  : ; < = > ? @  /
    // (the ranges of mteval's class; the apostrophe, comma, dash, period and digits are not in it).
    private static final Pattern SYMBOL = Pattern.compile("([{-~\\[-` -&(-+:-@/])");
    private static final Pattern PERIOD_COMMA_AFTER_NON_DIGIT = Pattern.compile("([^0-9])([.,])");
    private static final Pattern PERIOD_COMMA_BEFORE_NON_DIGIT = Pattern.compile("([.,])([^0-9])");
    private static final Pattern DASH_AFTER_DIGIT = Pattern.compile("([0-9])(-)");

    private Tokenizer13a() {}

    /** The tokens of one segment joined by single spaces. */
    public static String tokenize(String line) {
        line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ");
        if (line.indexOf('&') >= 0) {
            // in this order, as sacreBLEU does: "&amp;lt;" ends as "<", "&amp;quot;" as "&quot;"
            line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
        }
        line = " " + line + " ";
        line = SYMBOL.matcher(line).replaceAll(" $1 ");
        line = PERIOD_COMMA_AFTER_NON_DIGIT.matcher(line).replaceAll("$1 $2 ");
        line = PERIOD_COMMA_BEFORE_NON_DIGIT.matcher(line).replaceAll(" $1 $2");
        line = DASH_AFTER_DIGIT.matcher(line).replaceAll("$1 $2 ");
        return String.join(" ", PythonWhitespace.split(line));
    }
}
