package dev.qlora4j.tensor;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * An n-dimensional array: shape (row-major, contiguous), dtype and storage. Tensors on the
 * CPU expose their bytes as a {@link MemorySegment} (little-endian, as safetensors stores them);
 * tensors on a GPU carry backend-specific storage and are read through their Backend.
 *
 * <p>Views ({@link #reshape}, {@link #view(int...)} of a file) share storage and never free it;
 * {@link #close()} releases owned storage (a device allocation returns to the caching allocator).
 */
public final class Tensor implements AutoCloseable {
    public static final ValueLayout.OfFloat F32_LE = ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    public static final ValueLayout.OfShort I16_LE = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    public static final ValueLayout.OfInt I32_LE = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    public static final ValueLayout.OfLong I64_LE = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    public static final ValueLayout.OfDouble F64_LE = ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final int[] shape;
    private final DType dtype;
    private final Storage storage;
    private final boolean owner;

    public Tensor(Storage storage, DType dtype, boolean owner, int... shape) {
        this.shape = shape.clone();
        this.dtype = dtype;
        this.storage = storage;
        this.owner = owner;
        long need = numel() * dtype.byteSize();
        if (storage.byteSize() < need) {
            throw new IllegalArgumentException("storage of " + storage.byteSize() + " bytes is too small for "
                    + dtype + Arrays.toString(shape) + " (" + need + " bytes)");
        }
    }

    // ---- construction on the host ----

    /** A zero-filled host tensor (heap memory, freed by the GC). */
    public static Tensor zeros(DType dtype, int... shape) {
        long bytes = numel(shape) * dtype.byteSize();
        MemorySegment seg = switch (dtype) {
            case F32 -> MemorySegment.ofArray(new float[Math.toIntExact(bytes / 4)]);
            case I32 -> MemorySegment.ofArray(new int[Math.toIntExact(bytes / 4)]);
            case F64, I64 -> MemorySegment.ofArray(new long[Math.toIntExact(bytes / 8)]);
            case F16, BF16, I16 -> MemorySegment.ofArray(new short[Math.toIntExact(bytes / 2)]);
            default -> MemorySegment.ofArray(new byte[Math.toIntExact(bytes)]);
        };
        return new Tensor(new HostStorage(seg, null), dtype, true, shape);
    }

    /** A host tensor in native memory owned by a new arena (for large or pinned-size buffers). */
    public static Tensor allocateNative(DType dtype, int... shape) {
        Arena arena = Arena.ofShared();
        MemorySegment seg = arena.allocate(Math.max(1, numel(shape) * dtype.byteSize()), 64);
        return new Tensor(new HostStorage(seg, arena), dtype, true, shape);
    }

    /** Wraps a float array without copying (the array must not be modified elsewhere). */
    public static Tensor of(float[] data, int... shape) {
        checkCount(data.length, shape);
        return new Tensor(new HostStorage(MemorySegment.ofArray(data), null), DType.F32, true, shape);
    }

    /** Wraps an int array without copying. */
    public static Tensor ofInts(int[] data, int... shape) {
        checkCount(data.length, shape);
        return new Tensor(new HostStorage(MemorySegment.ofArray(data), null), DType.I32, true, shape);
    }

    /** A zero-copy view of host bytes (e.g. a slice of a memory-mapped file); never frees them. */
    public static Tensor view(MemorySegment bytes, DType dtype, int... shape) {
        return new Tensor(new HostStorage(bytes, null), dtype, false, shape);
    }

    /** Host float32 data converted to dtype (F32, BF16, F16, F64) with round-to-nearest-even. */
    public static Tensor fromFloats(float[] data, DType dtype, int... shape) {
        if (dtype == DType.F32) return of(data.clone(), shape);
        Tensor t = zeros(dtype, shape);
        for (int i = 0; i < data.length; i++) t.setFloat(i, data[i]);
        return t;
    }

    private static void checkCount(int n, int[] shape) {
        if (n != numel(shape)) {
            throw new IllegalArgumentException(n + " values do not fill shape " + Arrays.toString(shape));
        }
    }

    public static long numel(int[] shape) {
        long n = 1;
        for (int d : shape) {
            if (d < 0) throw new IllegalArgumentException("negative dimension in " + Arrays.toString(shape));
            n *= d;
        }
        return n;
    }

    // ---- metadata ----

    public int[] shape() { return shape.clone(); }

    public int rank() { return shape.length; }

    /** Size of dimension i; negative i counts from the end. */
    public int dim(int i) { return shape[i < 0 ? shape.length + i : i]; }

    public long numel() { return numel(shape); }

    public long byteSize() { return numel() * dtype.byteSize(); }

    public DType dtype() { return dtype; }

    public Storage storage() { return storage; }

    public Device device() { return storage.device(); }

    public boolean isOwner() { return owner; }

    /** Same storage, new shape with the same element count; the view does not own the storage. */
    public Tensor reshape(int... newShape) {
        int infer = -1;
        long known = 1;
        int[] s = newShape.clone();
        for (int i = 0; i < s.length; i++) {
            if (s[i] == -1) {
                if (infer >= 0) throw new IllegalArgumentException("only one -1 allowed in " + Arrays.toString(newShape));
                infer = i;
            } else {
                known *= s[i];
            }
        }
        if (infer >= 0) s[infer] = (int) (numel() / known);
        if (numel(s) != numel()) {
            throw new IllegalArgumentException("cannot reshape " + Arrays.toString(shape) + " to " + Arrays.toString(newShape));
        }
        return new Tensor(storage, dtype, false, s);
    }

    // ---- host access ----

    /** The bytes of a host tensor. */
    public MemorySegment segment() {
        if (!(storage instanceof HostStorage hs)) {
            throw new IllegalStateException("tensor is on " + device() + ": copy it to the host first (Backend.toHost)");
        }
        return hs.segment();
    }

    /** Element i of a host tensor of any dtype, as float. */
    public float getFloat(long i) {
        MemorySegment s = segment();
        return switch (dtype) {
            case F32 -> s.getAtIndex(F32_LE, i);
            case BF16 -> Half.bf16ToFloat(s.getAtIndex(I16_LE, i));
            case F16 -> Half.f16ToFloat(s.getAtIndex(I16_LE, i));
            case F64 -> (float) s.getAtIndex(F64_LE, i);
            case I32 -> s.getAtIndex(I32_LE, i);
            case I64 -> s.getAtIndex(I64_LE, i);
            case I16 -> s.getAtIndex(I16_LE, i);
            case I8 -> s.get(ValueLayout.JAVA_BYTE, i);
            case U8, BOOL -> s.get(ValueLayout.JAVA_BYTE, i) & 0xFF;
        };
    }

    /** Sets element i of a host tensor (rounded to nearest even for 16-bit floats). */
    public void setFloat(long i, float v) {
        MemorySegment s = segment();
        switch (dtype) {
            case F32 -> s.setAtIndex(F32_LE, i, v);
            case BF16 -> s.setAtIndex(I16_LE, i, Half.floatToBf16(v));
            case F16 -> s.setAtIndex(I16_LE, i, Half.floatToF16(v));
            case F64 -> s.setAtIndex(F64_LE, i, v);
            case I32 -> s.setAtIndex(I32_LE, i, (int) v);
            case I64 -> s.setAtIndex(I64_LE, i, (long) v);
            case I16 -> s.setAtIndex(I16_LE, i, (short) v);
            case I8, U8, BOOL -> s.set(ValueLayout.JAVA_BYTE, i, (byte) v);
        }
    }

    public int getInt(long i) {
        return switch (dtype) {
            case I32 -> segment().getAtIndex(I32_LE, i);
            case I64 -> Math.toIntExact(segment().getAtIndex(I64_LE, i));
            default -> (int) getFloat(i);
        };
    }

    /** A copy of a host tensor's values as float32. Heap F32 tensors are copied with one array copy. */
    public float[] toFloatArray() {
        int n = Math.toIntExact(numel());
        if (dtype == DType.F32) {
            return segment().asSlice(0, (long) n * 4).toArray(F32_LE);
        }
        float[] out = new float[n];
        for (int i = 0; i < n; i++) out[i] = getFloat(i);
        return out;
    }

    public int[] toIntArray() {
        int n = Math.toIntExact(numel());
        int[] out = new int[n];
        for (int i = 0; i < n; i++) out[i] = getInt(i);
        return out;
    }

    /** A host copy converted to dtype (float types round to nearest even). */
    public Tensor toDType(DType target) {
        if (target == dtype) {
            Tensor t = zeros(dtype, shape);
            MemorySegment.copy(segment(), 0, t.segment(), 0, byteSize());
            return t;
        }
        Tensor t = zeros(target, shape);
        long n = numel();
        for (long i = 0; i < n; i++) t.setFloat(i, getFloat(i));
        return t;
    }

    @Override
    public void close() {
        if (owner) storage.release();
    }

    @Override
    public String toString() {
        return "Tensor(" + dtype + Arrays.toString(shape) + ", " + device() + ")";
    }
}
