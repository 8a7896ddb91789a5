package dev.qlora4j.backend.cuda;

import dev.qlora4j.backend.QuantizedWeight;
import dev.qlora4j.quant.Int8Weight;
import dev.qlora4j.quant.QuantState4bit;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

/**
 * PLACEHOLDER of the CUDA quantized-weight ops (4-bit NF4/FP4 and LLM.int8), which another branch
 * implements (CudaQuant* / Quant4bitKernels / Int8Kernels, native/nf4.cu, native/int8.cu). It exists so
 * that this branch compiles on its own; the merge replaces this file with the real one. CudaBackend calls
 * exactly these four static methods.
 */
public final class CudaQuantOps {
    private CudaQuantOps() {}

    private static UnsupportedOperationException missing() {
        return new UnsupportedOperationException("4-bit/8-bit on CUDA: not in this build");
    }

    /** A 4-bit weight made ready for the GPU (dequantized to computeDType inside the matmul). */
    public static QuantizedWeight prepare4bit(CudaContext ctx, QuantState4bit state, DType computeDType) {
        throw missing();
    }

    /** An LLM.int8 weight made ready for the GPU; threshold 0 means pure int8. */
    public static QuantizedWeight prepare8bit(CudaContext ctx, Int8Weight weight, float threshold) {
        throw missing();
    }

    /** x [n, in] times the quantized weight transposed, + bias [out] or null -> [n, out]. */
    public static Tensor linear(CudaContext ctx, Tensor x, QuantizedWeight w, Tensor bias) {
        throw missing();
    }

    /** The dequantized weight [out, in] in dtype. */
    public static Tensor dequantize(CudaContext ctx, QuantizedWeight w, DType dtype) {
        throw missing();
    }
}
