package dev.qlora4j.bench;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Locale;

/**
 * The GPU board's power draw, SM clock and power-cap state sampled through NVML (libnvidia-ml.so.1, the driver's
 * management library, by FFM) while a benchmark's timed steps run. Why: a Llama-7B training step on an H200 runs
 * with its clocks held by the board's power cap in every sample (SM clocks 1.4-1.7 GHz instead of 1.98; nvidia-smi's
 * power.draw at 690 of 700 W), while the HF peer's step does not (1.98 GHz, the cap in 6% of samples; bench/RESULTS.md,
 * session 20). So our step's time moves with the board's power state from machine to machine; the summary printed
 * beside the figure says which state it was measured in. Where NVML is missing (no NVIDIA driver, a CPU-only host)
 * the monitor samples nothing and says so.
 *
 * <p>The device is NVML's index, which is the CUDA ordinal when CUDA_VISIBLE_DEVICES does not reorder the GPUs
 * ({@link #nvmlIndex}).
 */
final class BoardPower {
    private static final int NVML_CLOCK_SM = 1;
    /** nvmlClocksThrottleReasonSwPowerCap: the clocks are held down to stay within the power limit. */
    private static final long SW_POWER_CAP = 0x4L;

    /** What was seen: sample count, mean power (W), the enforced limit (W), share of samples at the power cap, mean and maximum SM clock (MHz). */
    record Summary(int samples, double meanWatts, double limitWatts, double capShare, double meanSmMhz, int maxSmMhz,
                   String unavailable) {
        String describe() {
            if (unavailable != null) return "board power: not sampled (" + unavailable + ")";
            if (samples == 0) return "board power: no samples (the timed steps ended before the first)";
            return String.format(Locale.ROOT, "board power (NVML, %d samples): %.0f W mean of NVML's 1-s averages (limit %.0f W),"
                    + " clocks held by the power cap in %.0f%% of samples; SM clock %.0f MHz mean (max %d)", samples, meanWatts,
                    limitWatts, 100 * capShare, meanSmMhz, maxSmMhz);
        }
    }

    private final Nvml nvml;          // null: unavailable
    private final String unavailable;
    private final Thread sampler;
    private volatile boolean running = true;
    private int samples, capped;
    private double wattSum, mhzSum;

    private BoardPower(Nvml nvml, String unavailable, long periodMs) {
        this.nvml = nvml;
        this.unavailable = unavailable;
        if (nvml == null) {
            sampler = null;
            return;
        }
        sampler = Thread.ofPlatform().daemon().name("board-power").start(() -> {
            while (running) {
                sample();
                try {
                    Thread.sleep(periodMs);
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
    }

    /** Starts sampling the GPU of NVML index nvmlIndex every periodMs; never fails (an unavailable NVML samples nothing). */
    static BoardPower start(int nvmlIndex, long periodMs) {
        try {
            return new BoardPower(Nvml.open(nvmlIndex), null, periodMs);
        } catch (Throwable t) {   // no library, no device, an old driver: the benchmark still runs
            return new BoardPower(null, t.getMessage() == null ? t.getClass().getSimpleName() : t.getMessage(), periodMs);
        }
    }

    /** NVML's index of CUDA device ordinal: the ordinal itself unless CUDA_VISIBLE_DEVICES names the GPUs (then the named index). */
    static int nvmlIndex(int cudaOrdinal) {
        String visible = System.getenv("CUDA_VISIBLE_DEVICES");
        if (visible == null || visible.isBlank()) return cudaOrdinal;
        String[] ids = visible.split(",");
        try {
            return cudaOrdinal < ids.length ? Integer.parseInt(ids[cudaOrdinal].trim()) : cudaOrdinal;
        } catch (NumberFormatException e) {
            return cudaOrdinal;   // UUIDs: assume the order is NVML's
        }
    }

    private synchronized void sample() {
        try {
            double watts = nvml.powerWatts();
            int mhz = nvml.smClockMhz();
            long reasons = nvml.throttleReasons();
            samples++;
            wattSum += watts;
            mhzSum += mhz;
            if ((reasons & SW_POWER_CAP) != 0) capped++;
        } catch (Throwable t) {
            running = false;   // a failing query stops the sampling, not the benchmark
        }
    }

    /** Stops sampling and summarizes. */
    Summary stop() {
        running = false;
        if (sampler == null) return new Summary(0, 0, 0, 0, 0, 0, unavailable);
        try {
            sampler.join(1000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        synchronized (this) {
            double limit, maxMhz;
            try {
                limit = nvml.limitWatts();
                maxMhz = nvml.maxSmClockMhz();
            } catch (Throwable t) {
                limit = Double.NaN;
                maxMhz = 0;
            }
            return samples == 0 ? new Summary(0, 0, limit, 0, 0, (int) maxMhz, null)
                    : new Summary(samples, wattSum / samples, limit, capped / (double) samples, mhzSum / samples, (int) maxMhz, null);
        }
    }

    /** The few NVML calls used, bound once; every call's nvmlReturn_t checked (0 = success). */
    private record Nvml(MemorySegment device, MethodHandle power, MethodHandle limit, MethodHandle clock,
                        MethodHandle maxClock, MethodHandle reasons) {
        static Nvml open(int index) throws Throwable {
            Linker linker = Linker.nativeLinker();
            SymbolLookup lib = SymbolLookup.libraryLookup("libnvidia-ml.so.1", Arena.global());
            var I = ValueLayout.JAVA_INT;
            var P = ValueLayout.ADDRESS;
            MethodHandle init = linker.downcallHandle(lib.find("nvmlInit_v2").orElseThrow(), FunctionDescriptor.of(I));
            MethodHandle byIndex = linker.downcallHandle(lib.find("nvmlDeviceGetHandleByIndex_v2").orElseThrow(),
                    FunctionDescriptor.of(I, I, P));
            check((int) init.invokeExact(), "nvmlInit_v2");
            MemorySegment out = Arena.global().allocate(P);
            check((int) byIndex.invokeExact(index, out), "nvmlDeviceGetHandleByIndex_v2(" + index + ")");
            MemorySegment device = out.get(P, 0);
            return new Nvml(device,
                    linker.downcallHandle(lib.find("nvmlDeviceGetPowerUsage").orElseThrow(), FunctionDescriptor.of(I, P, P)),
                    linker.downcallHandle(lib.find("nvmlDeviceGetEnforcedPowerLimit").orElseThrow(), FunctionDescriptor.of(I, P, P)),
                    linker.downcallHandle(lib.find("nvmlDeviceGetClockInfo").orElseThrow(), FunctionDescriptor.of(I, P, I, P)),
                    linker.downcallHandle(lib.find("nvmlDeviceGetMaxClockInfo").orElseThrow(), FunctionDescriptor.of(I, P, I, P)),
                    linker.downcallHandle(lib.find("nvmlDeviceGetCurrentClocksThrottleReasons").orElseThrow(),
                            FunctionDescriptor.of(I, P, P)));
        }

        private static void check(int status, String call) {
            if (status != 0) throw new IllegalStateException(call + " returned NVML status " + status);
        }

        double powerWatts() throws Throwable {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment mw = a.allocate(ValueLayout.JAVA_INT);
                check((int) power.invokeExact(device, mw), "nvmlDeviceGetPowerUsage");
                return Integer.toUnsignedLong(mw.get(ValueLayout.JAVA_INT, 0)) / 1000.0;
            }
        }

        double limitWatts() throws Throwable {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment mw = a.allocate(ValueLayout.JAVA_INT);
                check((int) limit.invokeExact(device, mw), "nvmlDeviceGetEnforcedPowerLimit");
                return Integer.toUnsignedLong(mw.get(ValueLayout.JAVA_INT, 0)) / 1000.0;
            }
        }

        int smClockMhz() throws Throwable { return clockOf(clock, "nvmlDeviceGetClockInfo"); }

        int maxSmClockMhz() throws Throwable { return clockOf(maxClock, "nvmlDeviceGetMaxClockInfo"); }

        private int clockOf(MethodHandle h, String call) throws Throwable {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment mhz = a.allocate(ValueLayout.JAVA_INT);
                check((int) h.invokeExact(device, NVML_CLOCK_SM, mhz), call);
                return mhz.get(ValueLayout.JAVA_INT, 0);
            }
        }

        long throttleReasons() throws Throwable {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment r = a.allocate(ValueLayout.JAVA_LONG);
                check((int) reasons.invokeExact(device, r), "nvmlDeviceGetCurrentClocksThrottleReasons");
                return r.get(ValueLayout.JAVA_LONG, 0);
            }
        }
    }
}
