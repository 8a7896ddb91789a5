package dev.qlora4j.cuda;

/**
 * What qlora4j reads about a GPU (cuDeviceGetName, cuDeviceTotalMem_v2, cuDeviceGetAttribute).
 *
 * @param ordinal                       device index (cuda:N)
 * @param name                          e.g. "NVIDIA H200"
 * @param computeCapabilityMajor        9 on Hopper
 * @param computeCapabilityMinor        0 on Hopper
 * @param multiprocessorCount           SMs (132 on H100/H200 SXM)
 * @param totalMemoryBytes              device memory
 * @param maxThreadsPerBlock            usually 1024
 * @param maxSharedMemoryPerBlockOptin  dynamic shared memory a kernel may opt into (cuFuncSetAttribute)
 * @param l2CacheBytes                  L2 size
 */
public record DeviceProperties(int ordinal, String name, int computeCapabilityMajor, int computeCapabilityMinor,
                               int multiprocessorCount, long totalMemoryBytes, int maxThreadsPerBlock,
                               int maxSharedMemoryPerBlockOptin, int l2CacheBytes) {

    /** e.g. 90 for compute capability 9.0. */
    public int computeCapability() { return computeCapabilityMajor * 10 + computeCapabilityMinor; }

    @Override
    public String toString() {
        return String.format("cuda:%d %s (sm_%d%d, %d SMs, %.1f GiB)", ordinal, name, computeCapabilityMajor,
                computeCapabilityMinor, multiprocessorCount, totalMemoryBytes / (double) (1L << 30));
    }
}
