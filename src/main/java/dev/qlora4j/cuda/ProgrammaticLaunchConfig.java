package dev.qlora4j.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * The argument block of cuLaunchKernelEx for a programmatic dependent launch: one CUlaunchConfig followed by the one
 * CUlaunchAttribute it points to, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 1 (cuda.h, CUDA 12+):
 * <pre>
 * CUlaunchConfig    (56 bytes): gridDimX/Y/Z, blockDimX/Y/Z, sharedMemBytes (unsigned, offsets 0..24), 4 bytes of
 *                               padding, hStream (offset 32), attrs (40), numAttrs (48), 4 bytes of padding;
 * CUlaunchAttribute (72 bytes): id (offset 0), 4 bytes of padding, value (a 64-byte union; the int
 *                               programmaticStreamSerializationAllowed at offset 8).
 * </pre>
 * One block per thread, reused by every launch (the driver reads it only during the call).
 */
final class ProgrammaticLaunchConfig {
    static final int CONFIG_BYTES = 56;
    static final int ATTRIBUTE_BYTES = 72;
    static final int ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;

    private final MemorySegment block = Arena.ofAuto().allocate(CONFIG_BYTES + ATTRIBUTE_BYTES, 8);

    ProgrammaticLaunchConfig() {
        MemorySegment attribute = block.asSlice(CONFIG_BYTES);
        attribute.set(JAVA_INT, 0, ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION);
        attribute.set(JAVA_INT, 8, 1);
        block.set(ADDRESS, 40, attribute);
        block.set(JAVA_INT, 48, 1);
    }

    /** The CUlaunchConfig for this launch (its attribute already set). */
    MemorySegment config(Dim3 grid, Dim3 block3, int dynamicSharedBytes, long stream) {
        block.set(JAVA_INT, 0, grid.x());
        block.set(JAVA_INT, 4, grid.y());
        block.set(JAVA_INT, 8, grid.z());
        block.set(JAVA_INT, 12, block3.x());
        block.set(JAVA_INT, 16, block3.y());
        block.set(JAVA_INT, 20, block3.z());
        block.set(JAVA_INT, 24, dynamicSharedBytes);
        block.set(JAVA_LONG, 32, stream);
        return block;
    }
}
