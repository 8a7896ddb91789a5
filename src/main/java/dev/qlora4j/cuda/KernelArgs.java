package dev.qlora4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

/**
 * Kernel arguments for cuLaunchKernel, in the order of the kernel's parameters:
 * {@code KernelArgs.of().ptr(x).ptr(y).i64(n)} for {@code kernel(const float* x, float* y, int64_t n)}.
 *
 * <p>cuLaunchKernel takes {@code void** kernelParams}: an array with one pointer per parameter, each
 * pointing at that parameter's value. {@link #layout(Arena)} writes both into the arena: a values
 * block of one 8-byte, 8-aligned slot per argument (a 4-byte int/float sits at the start of its slot,
 * which satisfies its alignment), then the pointer array. The driver reads the values during the
 * call (it copies them into the launch, and into the graph node when capturing), so a confined
 * arena closed right after cuLaunchKernel returns is safe.
 *
 * <p>The builder itself holds plain Java values; it can be reused for several launches. The launch path writes
 * them into a {@link Scratch} instead (one per thread, reused for every launch): its pointer array is written
 * once, so a launch only stores the values, with no native allocation.
 */
public final class KernelArgs {
    /** The C type of one argument; decides how many bytes of its slot the driver reads. */
    public enum Kind { PTR, I32, I64, F32 }

    static final long SLOT_BYTES = 8;

    private Kind[] kinds = new Kind[8];
    private long[] bits = new long[8];
    private int count;

    public static KernelArgs of() { return new KernelArgs(); }

    /** A device pointer (CUdeviceptr, T*). */
    public KernelArgs ptr(long devicePointer) { return add(Kind.PTR, devicePointer); }

    /** An int / int32_t / unsigned. */
    public KernelArgs i32(int v) { return add(Kind.I32, v); }

    /** An int64_t / size_t / long long. */
    public KernelArgs i64(long v) { return add(Kind.I64, v); }

    /** A float. */
    public KernelArgs f32(float v) { return add(Kind.F32, Float.floatToRawIntBits(v)); }

    private KernelArgs add(Kind k, long v) {
        if (count == kinds.length) {
            kinds = Arrays.copyOf(kinds, count * 2);
            bits = Arrays.copyOf(bits, count * 2);
        }
        kinds[count] = k;
        bits[count] = v;
        count++;
        return this;
    }

    public int count() { return count; }

    public Kind kind(int i) { return kinds[i]; }

    /**
     * Writes the values and the {@code void*[count]} pointer array into arena and returns the
     * pointer array (what cuLaunchKernel's kernelParams receives). With no arguments, returns
     * a one-slot array (never NULL, which some drivers reject for kernels without parameters).
     */
    public MemorySegment layout(Arena arena) {
        int n = Math.max(1, count);
        MemorySegment values = arena.allocate(SLOT_BYTES * n, SLOT_BYTES);
        MemorySegment pointers = arena.allocate(ValueLayout.ADDRESS.byteSize() * n, ValueLayout.ADDRESS.byteAlignment());
        for (int i = 0; i < count; i++) {
            long off = i * SLOT_BYTES;
            switch (kinds[i]) {
                case PTR, I64 -> values.set(ValueLayout.JAVA_LONG, off, bits[i]);
                case I32 -> values.set(ValueLayout.JAVA_INT, off, (int) bits[i]);
                case F32 -> values.set(ValueLayout.JAVA_FLOAT, off, Float.intBitsToFloat((int) bits[i]));
            }
            pointers.setAtIndex(ValueLayout.ADDRESS, i, values.asSlice(off, SLOT_BYTES));
        }
        return pointers;
    }

    /**
     * Writes the values into scratch (growing it when this launch has more arguments than it holds) and returns
     * its pointer array, valid until the next call on the same scratch. The driver copies the values during
     * cuLaunchKernel (and into the node when capturing), so the scratch may be rewritten once that returns.
     */
    public MemorySegment layout(Scratch scratch) {
        scratch.ensure(count);
        MemorySegment values = scratch.values;
        for (int i = 0; i < count; i++) {
            long off = i * SLOT_BYTES;
            switch (kinds[i]) {
                case PTR, I64 -> values.set(ValueLayout.JAVA_LONG, off, bits[i]);
                case I32 -> values.set(ValueLayout.JAVA_INT, off, (int) bits[i]);
                case F32 -> values.set(ValueLayout.JAVA_INT, off, (int) bits[i]);   // the raw float bits
            }
        }
        return scratch.pointers;
    }

    /**
     * A reusable native argument block: {@code capacity} 8-byte value slots and the {@code void*[capacity]} array
     * pointing at them (written when the block is made, never again). Memory from an automatic arena: freed when
     * the scratch is unreachable. Not thread-safe: one per thread.
     */
    public static final class Scratch {
        private MemorySegment values;
        private MemorySegment pointers;
        private int capacity;

        public Scratch() { allocate(16); }

        private void ensure(int count) {
            if (count > capacity) allocate(Math.max(count, capacity * 2));
        }

        private void allocate(int slots) {
            Arena arena = Arena.ofAuto();
            MemorySegment v = arena.allocate(SLOT_BYTES * slots, SLOT_BYTES);
            MemorySegment p = arena.allocate(ValueLayout.ADDRESS.byteSize() * slots, ValueLayout.ADDRESS.byteAlignment());
            for (int i = 0; i < slots; i++) p.setAtIndex(ValueLayout.ADDRESS, i, v.asSlice(i * SLOT_BYTES, SLOT_BYTES));
            values = v;
            pointers = p;
            capacity = slots;
        }

        int capacity() { return capacity; }
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder("KernelArgs(");
        for (int i = 0; i < count; i++) {
            if (i > 0) sb.append(", ");
            sb.append(kinds[i].name().toLowerCase()).append('=');
            sb.append(kinds[i] == Kind.F32 ? Float.toString(Float.intBitsToFloat((int) bits[i]))
                    : kinds[i] == Kind.PTR ? "0x" + Long.toHexString(bits[i]) : Long.toString(bits[i]));
        }
        return sb.append(')').toString();
    }
}
