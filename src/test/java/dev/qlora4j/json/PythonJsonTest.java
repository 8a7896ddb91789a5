package dev.qlora4j.json;

import org.junit.jupiter.api.Test;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** Expected strings are CPython 3's json.dumps / repr(float) output for the same values. */
class PythonJsonTest {
    @Test
    void floatReprMatchesPython() {
        double[] in = {0.05, 1e-05, 32.0, 0.1, 1e16, 1e15, 1.5e-07, 0.0001, 0.00012, -2.5, 1e22, 123456789012345680.0,
                5e-324, 1.7976931348623157e308, 0.30000000000000004, 2e-4, 1.0 / 3, 0.0, -0.0};
        String[] out = {"0.05", "1e-05", "32.0", "0.1", "1e+16", "1000000000000000.0", "1.5e-07", "0.0001", "0.00012", "-2.5",
                "1e+22", "1.2345678901234568e+17", "5e-324", "1.7976931348623157e+308", "0.30000000000000004", "0.0002",
                "0.3333333333333333", "0.0", "-0.0"};
        for (int i = 0; i < in.length; i++) assertEquals(out[i], PythonJson.floatRepr(in[i]), "repr(" + in[i] + ")");
    }

    @Test
    void defaultsKeepKeyOrderOnOneLine() {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("b", 1);
        d.put("a", new int[] {2, 3});
        d.put("c", null);
        d.put("d", true);
        d.put("e", List.of(0.5f, 7L, 1e-05, 1e16, Double.NaN, Double.NEGATIVE_INFINITY));
        d.put("f", Map.of());
        d.put("g", new int[0]);
        assertEquals("{\"b\": 1, \"a\": [2, 3], \"c\": null, \"d\": true, "
                + "\"e\": [0.5, 7, 1e-05, 1e+16, NaN, -Infinity], \"f\": {}, \"g\": []}", PythonJson.dumps(d));
    }

    @Test
    void ensureAsciiDecidesWhatIsEscaped() {
        String s = "\"\\\b\f\n\r\t\u0001\u007f\u00e9\uD83D\uDE00";
        assertEquals("\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u007f\\u00e9\\ud83d\\ude00\"", PythonJson.dumps(s));
        assertEquals("\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\u007f\u00e9\uD83D\uDE00\"",
                PythonJson.dumps(s, PythonJson.Options.DEFAULTS.withEnsureAscii(false)));
    }

    @Test
    void indentAndSortKeys() {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("z", List.of(1, List.of()));
        d.put("a", Map.of("k", "v"));
        assertEquals("{\n\"a\": {\n\"k\": \"v\"\n},\n\"z\": [\n1,\n[]\n]\n}",
                PythonJson.dumps(d, PythonJson.Options.DEFAULTS.withIndent(0).withSortKeys(true)));
        assertEquals("{\"z\": [1, []], \"a\": {\"k\": \"v\"}}", PythonJson.dumps(d));
        assertEquals("{\n   \"z\": [\n      1,\n      []\n   ],\n   \"a\": {\n      \"k\": \"v\"\n   }\n}",
                PythonJson.dumps(d, PythonJson.Options.DEFAULTS.withIndent(3)));
    }

    @Test
    void unsupportedValuesGoThroughTheFallbackOrAreRejected() {
        Object odd = new Object() {
            @Override
            public String toString() { return "odd"; }
        };
        assertEquals("[\"odd\"]", PythonJson.dumps(List.of(odd), PythonJson.Options.DEFAULTS.withFallback(Object::toString)));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PythonJson.dumps(List.of(odd)));
        assertEquals(true, e.getMessage().startsWith("cannot write ") && e.getMessage().endsWith(" as JSON: odd"), e.getMessage());
    }
}
