package dev.qlora4j.peft.config;

import org.junit.jupiter.api.Test;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** Expected strings were produced by CPython 3's json.dumps(value, indent=2, sort_keys=True) and repr(float). */
class PeftJsonTest {
    @Test
    void dumpsMatchesPythonLayoutEscapingAndKeyOrder() {
        Map<String, Object> y = new HashMap<>();
        y.put("y", null);
        Map<String, Object> b = new LinkedHashMap<>();
        b.put("z", List.of(1L, 2.5, y));
        b.put("a", List.of());
        Map<String, Object> root = new LinkedHashMap<>();
        root.put("b", b);
        root.put("a", "h\u00e9\"\\\n\t\u007f\u20ac\uD83D\uDE00");
        root.put("c", 1e-05);
        root.put("d", List.of(0.1, 1e16, 1e15, 1.5e-07, 1e22, -2.5, 0.0001, 0.00012, 123456789012345680.0, 3.0));
        String expected = """
                {
                  "a": "h\\u00e9\\"\\\\\\n\\t\\u007f\\u20ac\\ud83d\\ude00",
                  "b": {
                    "a": [],
                    "z": [
                      1,
                      2.5,
                      {
                        "y": null
                      }
                    ]
                  },
                  "c": 1e-05,
                  "d": [
                    0.1,
                    1e+16,
                    1000000000000000.0,
                    1.5e-07,
                    1e+22,
                    -2.5,
                    0.0001,
                    0.00012,
                    1.2345678901234568e+17,
                    3.0
                  ]
                }""";
        assertEquals(expected, PeftJson.dumps(root));
        assertEquals("{}", PeftJson.dumps(Map.of()));
    }
}
