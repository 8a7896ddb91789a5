package dev.qlora4j.backend.cpu;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Matmul;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.Nf4Matmul;
import dev.qlora4j.quant.Quant4bit;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * The CPU's quantized weights: the host quantization state as it is (packed codes stay packed;
 * the fused matmuls in dev.qlora4j.quant dequantize one row at a time).
 */
final class CpuQuantized {
    private CpuQuantized() {}

    /** A 4-bit weight and the dtype its matmul computes in. */
    record FourBit(QuantState4bit state, DType computeDType) implements QuantizedWeight {
        FourBit {
            if (state.shape().length != 2) {
                throw new IllegalArgumentException("a 4-bit linear weight must be 2-D [out, in], got shape "
                        + java.util.Arrays.toString(state.shape()));
            }
        }

        @Override public int outFeatures() { return state.shape()[0]; }

        @Override public int inFeatures() { return state.shape()[1]; }

        @Override
        public long deviceBytes() {
            long n = state.weight().byteSize() + state.absmax().byteSize();
            if (state.nested()) n += state.state2().absmax().byteSize() + 256 * 4;
            return n + 16 * 4;
        }

        @Override public void close() {}
    }

    /** An LLM.int8 weight and its outlier threshold. */
    record EightBit(Int8Weight weight, float threshold) implements QuantizedWeight {
        @Override public int outFeatures() { return weight.outFeatures(); }

        @Override public int inFeatures() { return weight.inFeatures(); }

        @Override public long deviceBytes() { return (long) weight.cb().length + 4L * weight.scb().length; }

        @Override public void close() {}
    }

    static Tensor linear(float[] x, int n, QuantizedWeight w, float[] bias) {
        float[] out = switch (w) {
            case FourBit f -> Nf4Matmul.linear(x, n, f.state(), bias, f.computeDType());
            case EightBit e -> Int8Matmul.linear(x, n, e.weight(), bias, e.threshold());
            default -> throw wrongBackend(w);
        };
        return Tensor.of(out, n, w.outFeatures());
    }

    static Tensor dequantize(QuantizedWeight w, DType dtype) {
        return switch (w) {
            case FourBit f -> Quant4bit.dequantize(f.state(), dtype);
            case EightBit e -> Tensor.fromFloats(e.weight().dequantize(), dtype, e.outFeatures(), e.inFeatures());
            default -> throw wrongBackend(w);
        };
    }

    private static IllegalArgumentException wrongBackend(QuantizedWeight w) {
        return new IllegalArgumentException("quantized weight " + w.getClass().getSimpleName()
                + " was prepared for another backend; prepare it with this backend's prepare4bit/prepare8bit");
    }
}
