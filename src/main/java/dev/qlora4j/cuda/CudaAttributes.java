package dev.qlora4j.cuda;

/** The numeric values of the CUDA enums the driver interface passes (from cuda.h; stable ABI). */
final class CudaAttributes {
    private CudaAttributes() {}

    // CUdevice_attribute
    static final int MAX_THREADS_PER_BLOCK = 1;
    static final int MULTIPROCESSOR_COUNT = 16;
    static final int L2_CACHE_SIZE = 38;
    static final int COMPUTE_CAPABILITY_MAJOR = 75;
    static final int COMPUTE_CAPABILITY_MINOR = 76;
    static final int MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;

    // CUfunction_attribute
    static final int FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;

    // CUstream_flags / CUevent_flags
    static final int STREAM_NON_BLOCKING = 0x1;
    static final int EVENT_DEFAULT = 0x0;
    static final int EVENT_DISABLE_TIMING = 0x2;

    // CUjit_option
    static final int JIT_ERROR_LOG_BUFFER = 5;
    static final int JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;

    /** CUjitInputType CU_JIT_INPUT_PTX (cuLinkAddData). */
    static final int JIT_INPUT_PTX = 1;
    /** Bytes of JIT error log kept when a PTX module fails to load. */
    static final int JIT_LOG_BYTES = 16 * 1024;
}
