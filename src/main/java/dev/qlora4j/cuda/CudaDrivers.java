package dev.qlora4j.cuda;

import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Chooses and caches the driver binding ({@code -Dqlora4j.cuda.binding=ffm|jcuda}, default ffm), and
 * remembers whether it is usable, so that "is there a GPU?" costs one probe per process.
 */
final class CudaDrivers {
    private CudaDrivers() {}

    static final String PROPERTY = "qlora4j.cuda.binding";

    private static volatile CudaDriver selected;
    private static final Map<CudaDriver, String> UNAVAILABLE = new ConcurrentHashMap<>();
    private static final Map<CudaDriver, Boolean> PROBED = new ConcurrentHashMap<>();

    static CudaDriver selected() {
        CudaDriver d = selected;
        if (d != null) return d;
        synchronized (CudaDrivers.class) {
            if (selected == null) selected = byName(System.getProperty(PROPERTY, "ffm"));
            return selected;
        }
    }

    /** A binding by name ("ffm" or "jcuda"); each is a process-wide singleton. */
    static CudaDriver byName(String name) {
        return switch (name.trim().toLowerCase(Locale.ROOT)) {
            case "ffm", "panama" -> FfmCudaDriver.instance();
            case "jcuda" -> JCudaDriver.instance();
            default -> throw new IllegalArgumentException("unknown CUDA binding '" + name + "' in -D" + PROPERTY
                    + " (use ffm or jcuda)");
        };
    }

    static boolean isAvailable(CudaDriver d) {
        return unavailableReason(d) == null;
    }

    static String unavailableReason(CudaDriver d) {
        if (!PROBED.containsKey(d)) {
            synchronized (CudaDrivers.class) {
                if (!PROBED.containsKey(d)) {
                    String reason = probe(d);
                    if (reason != null) UNAVAILABLE.put(d, reason);
                    PROBED.put(d, Boolean.TRUE);
                }
            }
        }
        return UNAVAILABLE.get(d);
    }

    private static String probe(CudaDriver d) {
        try {
            d.init();
            int n = d.deviceCount();
            return n > 0 ? null : "no CUDA device visible (cuDeviceGetCount = 0) -> " + CudaErrors.NO_GPU_HINT;
        } catch (CudaException e) {
            return e.getMessage();
        } catch (RuntimeException | LinkageError e) {
            return d.bindingName() + " binding could not start: " + e + " -> " + CudaErrors.NO_GPU_HINT;
        }
    }
}
