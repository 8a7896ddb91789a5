package dev.qlora4j.backend.cpu;

import dev.qlora4j.tensor.Half;
import dev.qlora4j.tensor.Tensor;
import java.lang.foreign.MemorySegment;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * Loads of float32, bfloat16 and float16 values from little-endian memory (heap or native
 * segments, e.g. a memory-mapped safetensors file) as float32 vectors of the preferred species,
 * so weights are widened slice by slice inside the hot loops and never copied whole to f32.
 */
final class HalfVectors {
    private HalfVectors() {}

    static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    static final VectorSpecies<Integer> I = VectorSpecies.of(int.class, F.vectorShape());
    /** Shorts with as many lanes as F: half its bit size. */
    static final VectorSpecies<Short> S = VectorSpecies.of(short.class, VectorShape.forBitSize(F.vectorBitSize() / 2));
    static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;

    /** F.length() float32 values starting at byte offset off. */
    static FloatVector f32(MemorySegment seg, long off) {
        return FloatVector.fromMemorySegment(F, seg, off, LE);
    }

    /** F.length() bfloat16 values starting at byte offset off, widened exactly to float32. */
    static FloatVector bf16(MemorySegment seg, long off) {
        IntVector wide = (IntVector) ShortVector.fromMemorySegment(S, seg, off, LE)
                .convertShape(VectorOperators.S2I, I, 0);
        // bf16 is the top half of a float32: the sign extension from S2I is shifted out.
        return wide.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
    }

    /**
     * count bfloat16 values from byte offset off widened into dst[dstOff...]: exact.
     */
    static void bf16ToFloats(MemorySegment seg, long off, float[] dst, int dstOff, int count) {
        int lanes = F.length();
        int bound = count - count % lanes;
        int i = 0;
        for (; i < bound; i += lanes) bf16(seg, off + 2L * i).intoArray(dst, dstOff + i);
        for (; i < count; i++) dst[dstOff + i] = Half.bf16ToFloat(seg.get(Tensor.I16_LE, off + 2L * i));
    }

    /**
     * count float16 values from byte offset off widened exactly into dst[dstOff...], through
     * scratch (any length) in slices. A plain Float.float16ToFloat loop over a short[] is what
     * C2 turns into the hardware conversion (vcvtph2ps with F16C): on the 2-core AVX2 dev box it
     * widened about 5 G values/s against 2.6 G/s for a Vector API bit-manipulation version.
     */
    static void f16ToFloats(MemorySegment seg, long off, float[] dst, int dstOff, int count, short[] scratch) {
        for (int done = 0; done < count; ) {
            int len = Math.min(scratch.length, count - done);
            MemorySegment.copy(seg, Tensor.I16_LE, off + 2L * done, scratch, 0, len);
            int base = dstOff + done;
            for (int i = 0; i < len; i++) dst[base + i] = Float.float16ToFloat(scratch[i]);
            done += len;
        }
    }
}
