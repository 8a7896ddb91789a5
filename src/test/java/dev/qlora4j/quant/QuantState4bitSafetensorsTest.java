package dev.qlora4j.quant;

import dev.qlora4j.json.PythonJson;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.HostStorage;
import dev.qlora4j.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

class QuantState4bitSafetensorsTest {
    static final String P = "model.layers.0.mlp.up_proj";

    /** A deep copy with fresh little-endian bytes, as a file reader would produce. */
    static Map<String, Tensor> copy(Map<String, Tensor> in) {
        Map<String, Tensor> out = new HashMap<>();
        in.forEach((k, t) -> {
            byte[] b = t.segment().asSlice(0, t.byteSize()).toArray(ValueLayout.JAVA_BYTE);
            out.put(k, new Tensor(new HostStorage(MemorySegment.ofArray(b), null), t.dtype(), true, t.shape()));
        });
        return out;
    }

    static Tensor json(String s) {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        return new Tensor(new HostStorage(MemorySegment.ofArray(b), null), DType.U8, true, b.length);
    }

    @Test
    void keysAndJsonAreExactlyBitsandbytes() {
        float[] w = new float[192];
        w[5] = -1f;
        w[64] = 2f;
        w[130] = 3f;
        QuantState4bit s = Quant4bit.quantize(w, new int[] {3, 64}, QuantType.NF4, 64, true);
        Map<String, Tensor> m = s.toSafetensors(P);
        assertEquals(Set.of(P + ".weight", P + ".weight.absmax", P + ".weight.quant_map", P + ".weight.nested_absmax",
                P + ".weight.nested_quant_map", P + ".weight.quant_state.bitsandbytes__nf4"), m.keySet());
        assertEquals(DType.U8, m.get(P + ".weight").dtype());
        assertArrayEquals(new int[] {96, 1}, m.get(P + ".weight").shape());
        assertEquals(DType.U8, m.get(P + ".weight.absmax").dtype());
        assertEquals(DType.F32, m.get(P + ".weight.quant_map").dtype());
        assertEquals(16, m.get(P + ".weight.quant_map").numel());
        assertEquals(256, m.get(P + ".weight.nested_quant_map").numel());
        assertEquals(DType.F32, m.get(P + ".weight.nested_absmax").dtype());
        Tensor js = m.get(P + ".weight.quant_state.bitsandbytes__nf4");
        String text = new String(js.segment().asSlice(0, js.byteSize()).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
        assertEquals("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [3, 64], "
                + "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 2.0}", text);

        QuantState4bit plain = Quant4bit.quantize(Tensor.fromFloats(w, DType.BF16, 3, 64), QuantType.FP4, 64, false);
        Map<String, Tensor> pm = plain.toSafetensors(P);
        assertEquals(Set.of(P + ".weight", P + ".weight.absmax", P + ".weight.quant_map", P + ".weight.quant_state.bitsandbytes__fp4"),
                pm.keySet());
        assertEquals(DType.F32, pm.get(P + ".weight.absmax").dtype());
        assertEquals("{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 64]}", plain.quantStateJson());
    }

    @Test
    void roundTripIsIdentical() {
        int[][] shapes = {{33, 77}, {5, 64}, {1, 4097}};
        for (int[] shape : shapes) {
            float[] w = QuantBench.gaussian(shape[0] * shape[1], 0.05, shape[1]);
            for (QuantType t : QuantType.values()) {
                for (boolean dq : new boolean[] {false, true}) {
                    for (int bs : new int[] {32, 64, 256}) {
                        QuantState4bit s = Quant4bit.quantize(w, shape, t, bs, dq);
                        QuantState4bit r = QuantState4bit.fromSafetensors(P, copy(s.toSafetensors(P)));
                        assertEquals(s.quantType(), r.quantType());
                        assertEquals(s.blocksize(), r.blocksize());
                        assertEquals(s.dtype(), r.dtype());
                        assertArrayEquals(s.shape(), r.shape());
                        assertEquals(s.nested(), r.nested());
                        assertEquals(s.offset(), r.offset(), 0f);
                        assertEquals(s.quantStateJson(), r.quantStateJson());
                        float[] a = Quant4bit.dequantizeToF32(s);
                        float[] b = Quant4bit.dequantizeToF32(r);
                        for (int i = 0; i < a.length; i++) {
                            assertEquals(Float.floatToRawIntBits(a[i]), Float.floatToRawIntBits(b[i]), "element " + i);
                        }
                    }
                }
            }
        }
    }

    @Test
    void offsetSurvivesThePythonFloatRoundTrip() {
        float[] w = QuantBench.gaussian(64 * 50, 0.013, 9);
        QuantState4bit s = Quant4bit.quantize(w, new int[] {50, 64}, QuantType.NF4, 64, true);
        QuantState4bit r = QuantState4bit.fromSafetensors(P, copy(s.toSafetensors(P)));
        assertEquals(Float.floatToRawIntBits(s.offset()), Float.floatToRawIntBits(r.offset()));
        assertTrue(s.quantStateJson().contains("\"nested_offset\": " + PythonJson.floatRepr((double) s.offset())));
    }

    @Test
    void pythonFloatRepr() {
        assertEquals("2.0", PythonJson.floatRepr(2.0));
        assertEquals("0.1", PythonJson.floatRepr(0.1));
        assertEquals("0.0001", PythonJson.floatRepr(1e-4));
        assertEquals("1e-05", PythonJson.floatRepr(1e-5));
        assertEquals("1.5e-07", PythonJson.floatRepr(1.5e-7));
        assertEquals("0.012299999594688416", PythonJson.floatRepr((double) 0.0123f));
        assertEquals("1234567.0", PythonJson.floatRepr(1234567.0));
        assertEquals("1e+16", PythonJson.floatRepr(1e16));
        assertEquals("1000000000000000.0", PythonJson.floatRepr(1e15));
        assertEquals("-0.5", PythonJson.floatRepr(-0.5));
        assertEquals("-0.0", PythonJson.floatRepr(-0.0));
    }

    private static Map<String, Tensor> valid(boolean nested) {
        float[] w = QuantBench.gaussian(10 * 64, 0.02, 1);
        return copy(Quant4bit.quantize(w, new int[] {10, 64}, QuantType.NF4, 64, nested).toSafetensors(P));
    }

    private static void assertError(Map<String, Tensor> m, String... fragments) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> QuantState4bit.fromSafetensors(P, m));
        for (String f : fragments) assertTrue(e.getMessage().contains(f), "message '" + e.getMessage() + "' lacks '" + f + "'");
    }

    @Test
    void badStatesGiveClearErrors() {
        Map<String, Tensor> m = valid(false);
        m.remove(P + ".weight.quant_state.bitsandbytes__nf4");
        assertError(m, P + ".weight.quant_state.bitsandbytes__nf4", "really 4-bit");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__fp4", m.get(P + ".weight.quant_state.bitsandbytes__nf4"));
        assertError(m, "both");

        m = valid(false);
        m.remove(P + ".weight");
        assertError(m, "missing '" + P + ".weight'");

        m = valid(false);
        m.put(P + ".weight.absmax", Tensor.of(new float[9], 9));
        assertError(m, P + ".weight.absmax", "9 values", "10 blocks");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4",
                json("{\"quant_type\": \"int4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [10, 64]}"));
        assertError(m, "bitsandbytes__nf4", "int4");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4",
                json("{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [10, 64]}"));
        assertError(m, "says quant_type 'fp4'");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4",
                json("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [10, 66]}"));
        assertError(m, P + ".weight'", "320 bytes", "needs 330");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4", json("{not json"));
        assertError(m, "does not hold a JSON object");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4",
                json("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [10, 64]}"));
        assertError(m, "dtype 'int8'");

        m = valid(false);
        m.put(P + ".weight.quant_state.bitsandbytes__nf4",
                json("{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", \"shape\": [10, 64]}"));
        assertError(m, "blocksize", "48");

        m = valid(false);
        float[] badMap = QuantType.NF4.quantMap();
        badMap[3] = 0.5f;
        m.put(P + ".weight.quant_map", Tensor.of(badMap, 16));
        assertError(m, P + ".weight.quant_map", "[3]");

        m = valid(false);
        m.put(P + ".weight.absmax", Quant4bit.bytesTensor(new byte[10], 10));
        assertError(m, P + ".weight.absmax", "must be F32");

        m = valid(true);
        m.remove(P + ".weight.nested_absmax");
        assertError(m, P + ".weight.nested_absmax", "missing");

        m = valid(true);
        m.remove(P + ".weight.nested_quant_map");
        assertError(m, "missing '" + P + ".weight.nested_quant_map'");

        m = valid(true);
        m.put(P + ".weight.nested_absmax", Tensor.of(new float[2], 2));
        assertError(m, P + ".weight.nested_absmax", "2 values");

        m = valid(false);
        m.put(P + ".weight.nested_absmax", Tensor.of(new float[1], 1));
        assertError(m, P + ".weight.nested_absmax", "present");

        m = valid(true);
        m.put(P + ".weight.absmax", Tensor.of(new float[10], 10));
        assertError(m, P + ".weight.absmax", "must be U8");

        // a state that parses is accepted from a lookup function too
        Map<String, Tensor> ok = valid(true);
        assertEquals(List.of(10, 64), List.of(QuantState4bit.fromSafetensors(P, ok::get).shape()[0], 64));
    }
}
