package dev.qlora4j.cuda;

import java.util.Map;

/**
 * Names and user-facing hints for CUDA driver and cuBLAS statuses. Names normally come from the
 * library itself (cuGetErrorName, cublasGetStatusName); the table here covers the codes we give
 * hints for, for when the library is missing or its name lookup fails.
 */
final class CudaErrors {
    private CudaErrors() {}

    static final int CUDA_SUCCESS = 0;
    static final int CUDA_ERROR_OUT_OF_MEMORY = 2;
    static final int CUDA_ERROR_NO_DEVICE = 100;

    static final String OOM_HINT =
            "out of GPU memory: lower the batch size, enable gradient checkpointing or offload layers (--device-map)";
    static final String NO_GPU_HINT = "no NVIDIA GPU/driver found: use --device cpu";

    private static final Map<Integer, String> CU_NAMES = Map.ofEntries(
            Map.entry(1, "CUDA_ERROR_INVALID_VALUE"),
            Map.entry(2, "CUDA_ERROR_OUT_OF_MEMORY"),
            Map.entry(3, "CUDA_ERROR_NOT_INITIALIZED"),
            Map.entry(4, "CUDA_ERROR_DEINITIALIZED"),
            Map.entry(34, "CUDA_ERROR_STUB_LIBRARY"),
            Map.entry(35, "CUDA_ERROR_INSUFFICIENT_DRIVER"),
            Map.entry(100, "CUDA_ERROR_NO_DEVICE"),
            Map.entry(101, "CUDA_ERROR_INVALID_DEVICE"),
            Map.entry(200, "CUDA_ERROR_INVALID_IMAGE"),
            Map.entry(201, "CUDA_ERROR_INVALID_CONTEXT"),
            Map.entry(209, "CUDA_ERROR_NO_BINARY_FOR_GPU"),
            Map.entry(218, "CUDA_ERROR_INVALID_PTX"),
            Map.entry(222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
            Map.entry(400, "CUDA_ERROR_INVALID_HANDLE"),
            Map.entry(500, "CUDA_ERROR_NOT_FOUND"),
            Map.entry(700, "CUDA_ERROR_ILLEGAL_ADDRESS"),
            Map.entry(701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
            Map.entry(719, "CUDA_ERROR_LAUNCH_FAILED"),
            Map.entry(900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"),
            Map.entry(901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"),
            Map.entry(999, "CUDA_ERROR_UNKNOWN"));

    /** A CUresult's name from the table above, or "CUresult <code>" for codes without a hint. */
    static String fallbackName(int code) {
        if (code == CudaException.LIBRARY_NOT_FOUND) return "LIBRARY_NOT_FOUND";
        return CU_NAMES.getOrDefault(code, "CUresult " + code);
    }

    static boolean isOutOfMemory(String errorName) {
        return "CUDA_ERROR_OUT_OF_MEMORY".equals(errorName) || "CUBLAS_STATUS_ALLOC_FAILED".equals(errorName);
    }

    /** What the user can do about an error, or null when there is nothing beyond the message itself. */
    static String hint(String errorName) {
        if (errorName == null) return null;
        if (isOutOfMemory(errorName)) return OOM_HINT;
        if (errorName.startsWith("CUDA_ERROR_STREAM_CAPTURE")) {
            return "a call that is not allowed while a stream is captured into a graph (allocation, synchronous copy,"
                    + " synchronize) ran during capture: allocate and copy before beginCapture";
        }
        return switch (errorName) {
            case "CUDA_ERROR_NO_DEVICE", "LIBRARY_NOT_FOUND" -> NO_GPU_HINT;
            case "CUDA_ERROR_STUB_LIBRARY" -> "the libcuda.so.1 that was loaded is the CUDA toolkit's stub, not the driver:"
                    + " put the NVIDIA driver's library directory first on LD_LIBRARY_PATH, or use --device cpu";
            case "CUDA_ERROR_INSUFFICIENT_DRIVER" -> "the NVIDIA driver is too old for this CUDA release: update the driver, or use --device cpu";
            case "CUDA_ERROR_NOT_INITIALIZED" -> "CUDA is not initialized: call CudaDriver.init() (or usePrimaryContext) first";
            case "CUDA_ERROR_INVALID_CONTEXT" -> "no CUDA context is current on this thread:"
                    + " call CudaDriver.usePrimaryContext(device) on this thread first";
            case "CUDA_ERROR_UNSUPPORTED_PTX_VERSION" -> "the NVIDIA driver is older than the nvcc that built kernels-ptx"
                    + " (kernels-ptx/MANIFEST names it): update the driver";
            case "CUDA_ERROR_INVALID_PTX", "CUDA_ERROR_INVALID_IMAGE" -> "the PTX did not compile for this GPU (JIT log above):"
                    + " rebuild kernels-ptx with 'make -C native' and check tools/check-ptx.sh";
            case "CUDA_ERROR_NO_BINARY_FOR_GPU" -> "the module has no code for this GPU: sm90a PTX runs only on compute capability 9.0";
            case "CUDA_ERROR_NOT_FOUND" -> "no such kernel in the module: check the extern \"C\" name in native/*.cu"
                    + " and rebuild kernels-ptx";
            case "CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED" -> "a kernel accessed memory it does not own; the"
                    + " CUDA context is now unusable (restart the process); run under compute-sanitizer to find the kernel";
            case "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" -> "the launch asks for more registers/threads/shared memory per block"
                    + " than the kernel can have: lower the block size";
            case "CUBLAS_LIBRARY_NOT_FOUND" -> "cuBLAS is not installed where qlora4j looks: install the CUDA toolkit's"
                    + " cuBLAS (12 or 13) and set CUDA_HOME or LD_LIBRARY_PATH, or build with 'mvn -Pcuda-libs' (bytedeco"
                    + " redist jars, extracted to ~/.javacpp/cache on first use); or use --device cpu";
            case "CUBLAS_STATUS_NOT_INITIALIZED" -> "cuBLAS could not start: check that a CUDA context is current and the"
                    + " cuBLAS library matches the driver";
            case "CUBLAS_STATUS_NOT_SUPPORTED", "CUBLAS_STATUS_INVALID_VALUE" -> "this dtype / layout combination is not"
                    + " supported by cublasGemmEx (see the cuBLAS docs' GemmEx type table)";
            default -> null;
        };
    }
}
