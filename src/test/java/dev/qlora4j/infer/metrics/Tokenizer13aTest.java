package dev.qlora4j.infer.metrics;

import org.junit.jupiter.api.Test;

import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The 13a tokenizer on tricky punctuation. The expected strings are what sacreBLEU's
 * Tokenizer13a returns for these lines (its regular expressions and replacements run under
 * CPython's re); comments say which rule each case exercises.
 */
class Tokenizer13aTest {
    private static void check(String in, String expected) {
        assertEquals(expected, Tokenizer13a.tokenize(in), () -> "tokenizing " + in);
    }

    @Test
    void apostrophesAndWordDashesStayInWords() {
        check("It wasn't surprising.", "It wasn't surprising .");
        check("state-of-the-art 2-3 x-1 10-", "state-of-the-art 2 - 3 x-1 10 -"); // dash split only after a digit
        check("-5 -x 5-", "-5 -x 5 -");
        check("co-op's \"quote\" 'single'", "co-op's \" quote \" 'single'");
    }

    @Test
    void periodsAndCommasSplitUnlessBetweenDigits() {
        check("Pi is 3.14, not 3,14.", "Pi is 3.14 , not 3,14 .");
        check("1,000.50 and .5 or 5. then", "1,000.50 and . 5 or 5 . then");
        check("a...b", "a . . . b");
        check("U.S.A. e.g., etc.", "U . S . A . e . g . , etc .");
        check(",,1,,", ", ,1 , ,"); // a comma before a digit stays attached to it
        check("\u017e.\u0165, \u03a9.1", "\u017e . \u0165 , \u03a9 . 1");
    }

    @Test
    void symbolsSplitEverywhere() {
        check("Hello, world! (really?)", "Hello , world ! ( really ? )");
        check("$5/hour @home #tag 50% {x} [y] a|b ~z ^ _ `", "$ 5 / hour @ home # tag 50 % { x } [ y ] a | b ~ z ^ _ `");
    }

    @Test
    void sgmlEntitiesSkippedMarkersAndLineBreaks() {
        check("&quot;quoted&quot; &amp;lt; &amp; &gt;", "\" quoted \" < & >");
        check("line-\nbreak\nnext<skipped>!", "linebreak next !");
    }

    @Test
    void whitespaceIsPythonsWhitespace() {
        // no-break and thin spaces separate tokens (Python's str.split does), a zero-width space does not
        check("no\u00a0break\u2009thin\u200bzero", "no break thin\u200bzero");
        check("tab\there  and   spaces ", "tab here and spaces");
        assertEquals(List.of("a", "b"), PythonWhitespace.split("\u3000a\u0085b\u001f"));
        assertEquals(" x", PythonWhitespace.rstrip(" x\u202f\n"));
        assertEquals("x", PythonWhitespace.strip("\u00a0x\u2028"));
    }
}
