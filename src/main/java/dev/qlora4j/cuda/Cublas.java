package dev.qlora4j.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.Map;

/**
 * cuBLAS through FFM: one handle (bound to the CUDA context current when it was created) and the
 * mixed-precision GEMMs the model needs. Inputs bf16 / f16 / f32, output of the same type or f32,
 * always accumulated in float32 (CUBLAS_COMPUTE_32F). With the default math mode, f32 inputs use
 * true f32 arithmetic (no TF32) unless {@link #setMathMode} asks for TF32.
 *
 * <p>cuBLAS is column-major; {@link #gemmRowMajor} and {@link #linear} take row-major operands and
 * map them as {@link RowMajorGemm} documents.
 *
 * <p>Arena ownership: the library is opened in the global arena; out-parameters live in a confined arena
 * per call; alpha/beta live in a small block owned by the handle, rewritten by every GEMM (host pointer mode:
 * cuBLAS reads the scalars before returning, also when capturing a graph), so a GEMM allocates no native
 * memory. The error detail of a GEMM is only formatted when it fails.
 * Not thread-safe: use one Cublas per thread (cuBLAS handles are not meant to be shared).
 */
public final class Cublas implements AutoCloseable {

    /** cudaDataType_t of an operand. */
    public enum DataType {
        F32(0, 4), F16(2, 2), BF16(14, 2);

        private final int cudaValue;
        private final int byteSize;

        DataType(int cudaValue, int byteSize) {
            this.cudaValue = cudaValue;
            this.byteSize = byteSize;
        }

        public int cudaValue() { return cudaValue; }

        public int byteSize() { return byteSize; }
    }

    /** cublasMath_t. */
    public enum MathMode {
        DEFAULT(0), PEDANTIC(2), TF32_TENSOR_OP(3),
        /**
         * CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION: 16-bit outputs are
         * reduced in float32 (by default cuBLAS may sum split-K partials in bf16/f16, several ulps away
         * from the CPU reference).
         */
        DEFAULT_NO_REDUCED_PRECISION_REDUCTION(16);

        private final int value;

        MathMode(int value) { this.value = value; }
    }

    static final int CUBLAS_COMPUTE_32F = 68;
    static final int CUBLAS_GEMM_DEFAULT = -1;

    private static final Map<Integer, String> STATUS_NAMES = Map.of(
            1, "CUBLAS_STATUS_NOT_INITIALIZED", 3, "CUBLAS_STATUS_ALLOC_FAILED", 7, "CUBLAS_STATUS_INVALID_VALUE",
            8, "CUBLAS_STATUS_ARCH_MISMATCH", 11, "CUBLAS_STATUS_MAPPING_ERROR", 13, "CUBLAS_STATUS_EXECUTION_FAILED",
            14, "CUBLAS_STATUS_INTERNAL_ERROR", 15, "CUBLAS_STATUS_NOT_SUPPORTED", 16, "CUBLAS_STATUS_LICENSE_ERROR");

    // The library pair, opened on first use (see CublasLocator); process-wide.
    private static final NativeLibrary LIBRARY = new NativeLibrary("cuBLAS", () -> CublasLocator.open().cublas());

    private static Downcall fn(FunctionDescriptor d, String name) { return new Downcall(() -> LIBRARY, d, name); }

    private static FunctionDescriptor status(MemoryLayout... args) { return FunctionDescriptor.of(JAVA_INT, args); }

    private static final Downcall CREATE = fn(status(ADDRESS), "cublasCreate_v2");
    private static final Downcall DESTROY = fn(status(JAVA_LONG), "cublasDestroy_v2");
    private static final Downcall SET_STREAM = fn(status(JAVA_LONG, JAVA_LONG), "cublasSetStream_v2");
    private static final Downcall SET_MATH_MODE = fn(status(JAVA_LONG, JAVA_INT), "cublasSetMathMode");
    private static final Downcall GET_STATUS_NAME = fn(FunctionDescriptor.of(ADDRESS, JAVA_INT), "cublasGetStatusName");
    // cublasGemmEx(handle, transa, transb, m, n, k, const void* alpha, const void* A, Atype, lda,
    //              const void* B, Btype, ldb, const void* beta, void* C, Ctype, ldc, computeType, algo)
    private static final Downcall GEMM_EX = fn(status(JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT,
            ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_INT, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT,
            JAVA_INT, JAVA_INT), "cublasGemmEx");
    // cublasGemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, long long strideA,
    //              B, Btype, ldb, long long strideB, beta, C, Ctype, ldc, long long strideC, int batchCount,
    //              computeType, algo)
    private static final Downcall GEMM_STRIDED_BATCHED_EX = fn(status(JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT,
            JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS,
            JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT), "cublasGemmStridedBatchedEx");

    private long handle;
    private final MemorySegment alpha;   // float, host pointer mode: read by cuBLAS before the call returns
    private final MemorySegment beta;    // float

    private Cublas(long handle) {
        this.handle = handle;
        MemorySegment scalars = Arena.ofAuto().allocate(2 * JAVA_FLOAT.byteSize(), JAVA_FLOAT.byteAlignment());
        this.alpha = scalars.asSlice(0, JAVA_FLOAT.byteSize());
        this.beta = scalars.asSlice(JAVA_FLOAT.byteSize(), JAVA_FLOAT.byteSize());
    }

    /** Whether cuBLAS can be opened (never throws; says nothing about a GPU). */
    public static boolean isLibraryAvailable() { return LIBRARY.isLoadable(); }

    /** A handle on the CUDA context current on this thread (make one current first: usePrimaryContext). */
    public static Cublas create() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check(CREATE, (int) CREATE.handle().invokeExact(out), null);
            return new Cublas(out.get(JAVA_LONG, 0));
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    /** Work is issued to stream from now on (0 = the legacy default stream). */
    public void setStream(long stream) {
        try {
            check(SET_STREAM, (int) SET_STREAM.handle().invokeExact(handle(), stream), null);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    public void setMathMode(MathMode mode) {
        try {
            check(SET_MATH_MODE, (int) SET_MATH_MODE.handle().invokeExact(handle(), mode.value), null);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    /**
     * Column-major cublasGemmEx: C = alpha · op(A) · op(B) + beta · C with op(A) [m,k], op(B) [k,n],
     * C [m,n], float32 accumulation. A and B must have the same type; C is that type or F32.
     */
    public void gemmEx(int opA, int opB, int m, int n, int k, float alpha, long a, DataType abType, int lda,
                       long b, int ldb, float beta, long c, DataType cType, int ldc) {
        checkTypes(abType, cType);
        int r;
        try {
            this.alpha.set(JAVA_FLOAT, 0, alpha);
            this.beta.set(JAVA_FLOAT, 0, beta);
            r = (int) GEMM_EX.handle().invokeExact(handle(), opA, opB, m, n, k, this.alpha, a, abType.cudaValue, lda,
                    b, abType.cudaValue, ldb, this.beta, c, cType.cudaValue, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        } catch (Throwable t) { throw Downcall.propagate(t); }
        if (r != 0) {
            check(GEMM_EX, r, String.format("op %d/%d m=%d n=%d k=%d lda=%d ldb=%d ldc=%d %s->%s",
                    opA, opB, m, n, k, lda, ldb, ldc, abType, cType));
        }
    }

    /** Column-major cublasGemmStridedBatchedEx: batch independent GEMMs, matrix i at base + i · stride (elements). */
    public void gemmStridedBatchedEx(int opA, int opB, int m, int n, int k, float alpha, long a, DataType abType,
                                     int lda, long strideA, long b, int ldb, long strideB, float beta, long c,
                                     DataType cType, int ldc, long strideC, int batch) {
        checkTypes(abType, cType);
        int r;
        try {
            this.alpha.set(JAVA_FLOAT, 0, alpha);
            this.beta.set(JAVA_FLOAT, 0, beta);
            r = (int) GEMM_STRIDED_BATCHED_EX.handle().invokeExact(handle(), opA, opB, m, n, k, this.alpha, a,
                    abType.cudaValue, lda, strideA, b, abType.cudaValue, ldb, strideB, this.beta, c, cType.cudaValue, ldc,
                    strideC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        } catch (Throwable t) { throw Downcall.propagate(t); }
        if (r != 0) {
            check(GEMM_STRIDED_BATCHED_EX, r, String.format("op %d/%d m=%d n=%d k=%d batch=%d %s->%s",
                    opA, opB, m, n, k, batch, abType, cType));
        }
    }

    /**
     * Row-major C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C; A stored [m,k] ([k,m] if transA),
     * B stored [k,n] ([n,k] if transB), C stored [m,n], all contiguous.
     */
    public void gemmRowMajor(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, long b,
                             DataType abType, float beta, long c, DataType cType) {
        RowMajorGemm g = RowMajorGemm.of(transA, transB, m, n, k);
        gemmEx(g.opA(), g.opB(), g.m(), g.n(), g.k(), alpha, b, abType, g.lda(), a, g.ldb(), beta, c, cType, g.ldc());
    }

    /** The linear layer: y[m,n] = x[m,k] · w[n,k]^T (row-major; x and w of abType, y of yType). */
    public void linear(int m, int n, int k, long x, long w, DataType abType, long y, DataType yType) {
        gemmRowMajor(false, true, m, n, k, 1f, x, w, abType, 0f, y, yType);
    }

    /** Row-major batched: for i in [0, batch): C_i = alpha · op(A_i) · op(B_i) + beta · C_i, strides in elements. */
    public void gemmRowMajorStridedBatched(boolean transA, boolean transB, int m, int n, int k, float alpha,
                                           long a, long strideA, long b, long strideB, DataType abType, float beta,
                                           long c, long strideC, DataType cType, int batch) {
        RowMajorGemm g = RowMajorGemm.of(transA, transB, m, n, k);
        gemmStridedBatchedEx(g.opA(), g.opB(), g.m(), g.n(), g.k(), alpha, b, abType, g.lda(), strideB, a, g.ldb(),
                strideA, beta, c, cType, g.ldc(), strideC, batch);
    }

    private static void checkTypes(DataType abType, DataType cType) {
        if (cType != abType && cType != DataType.F32) {
            throw new IllegalArgumentException("cublasGemmEx with " + abType + " inputs writes " + abType + " or F32, not " + cType);
        }
    }

    private long handle() {
        if (handle == 0) throw new IllegalStateException("cuBLAS handle was closed");
        return handle;
    }

    @Override
    public void close() {
        if (handle == 0) return;
        long h = handle;
        handle = 0;
        try {
            check(DESTROY, (int) DESTROY.handle().invokeExact(h), null);
        } catch (Throwable t) { throw Downcall.propagate(t); }
    }

    private static void check(Downcall fn, int status, String detail) {
        if (status != 0) throw new CudaException(fn.name(), status, statusName(status), detail);
    }

    /** cublasGetStatusName, or the name from the cuBLAS docs' table when the library cannot say. */
    static String statusName(int status) {
        try {
            MemorySegment s = (MemorySegment) GET_STATUS_NAME.handle().invokeExact(status);
            if (!s.equals(MemorySegment.NULL)) return s.reinterpret(256).getString(0, StandardCharsets.UTF_8);
        } catch (Throwable ignored) {
            // fall through to the table
        }
        return STATUS_NAMES.getOrDefault(status, "cublasStatus " + status);
    }
}
