package dev.qlora4j.cuda;

/**
 * A failed CUDA driver / cuBLAS call, or a native library that could not be loaded. Carries the
 * native function's name, the numeric status (CUresult or cublasStatus_t, or {@link #LIBRARY_NOT_FOUND}),
 * its symbolic name (cuGetErrorName / cublasGetStatusName) and, for the errors a user can act on,
 * a hint that says what to do.
 */
public class CudaException extends RuntimeException {
    /** Not a CUresult: the shared library (libcuda, libcublas, JCuda's JNI library) could not be loaded. */
    public static final int LIBRARY_NOT_FOUND = -1;
    /** Not a CUresult: the library loaded but lacks a function this code needs (too old). */
    public static final int SYMBOL_NOT_FOUND = -2;

    private final String function;
    private final int code;
    private final String errorName;

    /**
     * @param function  the native function (or library) that failed, e.g. "cuMemAlloc_v2"
     * @param code      the status it returned
     * @param errorName its symbolic name, e.g. "CUDA_ERROR_OUT_OF_MEMORY"
     * @param detail    extra facts (sizes, JIT log, places searched); may be null
     */
    public CudaException(String function, int code, String errorName, String detail) {
        super(message(function, code, errorName, detail));
        this.function = function;
        this.code = code;
        this.errorName = errorName;
    }

    public CudaException(String function, int code, String errorName, String detail, Throwable cause) {
        this(function, code, errorName, detail);
        initCause(cause);
    }

    private static String message(String function, int code, String errorName, String detail) {
        StringBuilder sb = new StringBuilder(function).append(" failed: ").append(errorName);
        if (code >= 0) sb.append(" (").append(code).append(')');
        if (detail != null && !detail.isBlank()) sb.append(": ").append(detail);
        String hint = CudaErrors.hint(errorName);
        if (hint != null) sb.append(" -> ").append(hint);
        return sb.toString();
    }

    public String function() { return function; }

    public int code() { return code; }

    public String errorName() { return errorName; }

    /** True for CUDA_ERROR_OUT_OF_MEMORY and cuBLAS' CUBLAS_STATUS_ALLOC_FAILED. */
    public boolean isOutOfMemory() { return CudaErrors.isOutOfMemory(errorName); }
}
