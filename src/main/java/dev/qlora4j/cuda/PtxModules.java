package dev.qlora4j.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Predicate;

/**
 * The kernels of kernels-ptx/ (packaged as classpath resources), loaded lazily, once per CUDA context:
 * {@code PtxModules.forCurrentContext(driver).function("cast", "cast_f32_to_bf16")}.
 *
 * <p>Module choice: on compute capability 9.0 a module named {@code <name>.sm90a.ptx} is preferred
 * when it exists (Hopper-only instructions: wgmma, setmaxnreg, which run on 9.0 and nowhere else);
 * otherwise {@code <name>.ptx} (portable compute_80 PTX the driver JIT-compiles for the GPU). On 9.0 the
 * chosen PTX's machine code, assembled by the build's ptxas and committed beside it ({@link #cubinFor}), is
 * loaded instead when the driver accepts it: the driver's own JIT compiles some kernels worse.
 * Module and function handles are cached; they stay valid as long as the context does.
 *
 * <p>The sm90a modules are built with programmatic dependent launch (native/pdl.cuh; native/Makefile's SM90A list):
 * {@link #launchesAsDependent} tells the launcher which kernels keep that contract and so may be started with
 * {@link CudaDriver#launchKernelProgrammatic}.
 */
public final class PtxModules {
    static final String RESOURCE_DIR = "kernels-ptx/";

    private record ContextKey(String binding, long context) {}

    private static final Map<ContextKey, PtxModules> BY_CONTEXT = new ConcurrentHashMap<>();

    private static final KernelCache CACHE = KernelCache.fromEnvironment();

    /** -Dqlora4j.cuda.sm90a=false: the portable PTX on Hopper too (no programmatic launches; for A/B timing). */
    private static final boolean HOPPER_BUILDS = Boolean.parseBoolean(System.getProperty("qlora4j.cuda.sm90a", "true"));

    /**
     * The modules whose kernels run between the training step's GEMMs (the 4-bit dequantize, the LoRA fold's
     * copies, the norm and SwiGLU backwards, the adapters' gradient adds): sm90a builds with programmatic dependent
     * launch since session 18. -Dqlora4j.cuda.pdlTrain=false launches them plainly (their sm90a code still runs; for
     * A/B timing).
     */
    static final Set<String> TRAINING_MODULES = Set.of("nf4", "lora_fold", "norm_bwd", "train_elementwise");
    private static final boolean TRAINING_PDL = Boolean.parseBoolean(System.getProperty("qlora4j.cuda.pdlTrain", "true"));

    /**
     * -Dqlora4j.cuda.cubins=false: JIT-compile the PTX on Hopper too instead of loading the committed cubins (for A/B
     * timing; the driver's JIT ignores setmaxnreg when it allocates registers, native/Makefile).
     */
    private static final boolean CUBINS = Boolean.parseBoolean(System.getProperty("qlora4j.cuda.cubins", "true"));

    private final CudaDriver driver;
    private final int ccMajor;
    private final int ccMinor;
    private final KernelCache cache;
    private final Map<String, Long> modules = new ConcurrentHashMap<>();
    // module -> kernel -> CUfunction: two lookups on the names as the launchers pass them (no key string built)
    private final Map<String, Map<String, Long>> functions = new ConcurrentHashMap<>();
    private final Set<String> hopperModules = ConcurrentHashMap.newKeySet();
    private final Set<Long> dependentLaunchable = ConcurrentHashMap.newKeySet();

    PtxModules(CudaDriver driver, int ccMajor, int ccMinor) {
        this(driver, ccMajor, ccMinor, CACHE);
    }

    PtxModules(CudaDriver driver, int ccMajor, int ccMinor, KernelCache cache) {
        this.driver = driver;
        this.ccMajor = ccMajor;
        this.ccMinor = ccMinor;
        this.cache = cache;
    }

    /** The modules of the context current on this thread (make one current first: usePrimaryContext). */
    public static PtxModules forCurrentContext(CudaDriver driver) {
        long ctx = driver.contextGetCurrent();
        if (ctx == 0) {
            throw new IllegalStateException("no CUDA context is current on thread " + Thread.currentThread().getName()
                    + ": call CudaDriver.usePrimaryContext(device) on it first");
        }
        return BY_CONTEXT.computeIfAbsent(new ContextKey(driver.bindingName(), ctx), k -> {
            DeviceProperties p = driver.deviceProperties(driver.contextGetDevice());
            return new PtxModules(driver, p.computeCapabilityMajor(), p.computeCapabilityMinor());
        });
    }

    /** The CUfunction of an extern "C" kernel in native/&lt;module&gt;.cu. */
    public long function(String module, String kernel) {
        Map<String, Long> byKernel = functions.get(module);
        if (byKernel != null) {
            Long f = byKernel.get(kernel);
            if (f != null) return f;
        }
        synchronized (this) {
            return functions.computeIfAbsent(module, k -> new ConcurrentHashMap<>())
                    .computeIfAbsent(kernel, k -> {
                        long f = driver.moduleGetFunction(module(module), kernel);
                        if (hopperModules.contains(module) && (TRAINING_PDL || !TRAINING_MODULES.contains(module))) {
                            dependentLaunchable.add(f);
                        }
                        return f;
                    });
        }
    }

    /** The CUmodule, loaded on first use. */
    public long module(String name) {
        Long m = modules.get(name);
        if (m != null) return m;
        synchronized (this) {
            return modules.computeIfAbsent(name, n -> {
                String cubin = cubinFor(n, ccMajor, ccMinor, PtxModules::resourceExists);
                if (cubin != null) {
                    try {
                        long loaded = driver.moduleLoadData(readResource(cubin));
                        if (isHopperResource(cubin)) hopperModules.add(n);
                        return loaded;
                    } catch (CudaException e) {
                        // a driver older than the nvcc that assembled it: the PTX below, compiled by the driver
                    }
                }
                String resource = resourceFor(n, ccMajor, ccMinor, PtxModules::resourceExists);
                long loaded = load(readResource(resource));
                if (isHopperResource(resource)) hopperModules.add(n);
                return loaded;
            });
        }
    }

    /**
     * A module from PTX through the kernel cache: the cached cubin when there is a good one (a stale one is
     * dropped and compiled again), else the PTX compiled by the driver, loaded, and kept for the next process.
     */
    long load(byte[] ptx) {
        if (!cache.enabled()) return driver.moduleLoadData(ptx);
        String key = KernelCache.key(ptx, ccMajor, ccMinor, driver.driverVersion());
        byte[] cached = cache.read(key);
        if (cached != null) {
            try {
                return driver.moduleLoadData(cached);
            } catch (CudaException e) {
                cache.remove(key);   // not loadable by this driver/device after all: compile it again
            }
        }
        byte[] cubin;
        try {
            cubin = driver.compilePtx(ptx);
        } catch (CudaException e) {
            if (e.code() != CudaException.SYMBOL_NOT_FOUND) throw e;
            return driver.moduleLoadData(ptx);   // a driver without the link API: JIT on every load
        }
        long module = driver.moduleLoadData(cubin);
        cache.write(key, cubin);
        return module;
    }

    /**
     * Whether function (from {@link #function}) comes from an sm90a module, whose kernels all keep native/pdl.cuh's
     * contract and may therefore be launched as programmatic dependents of the kernel before them.
     */
    public boolean launchesAsDependent(long function) {
        return dependentLaunchable.contains(function);
    }

    /** Whether module (loaded now if it is not yet) comes from its sm90a build: its Hopper-only kernels exist. */
    public boolean isHopperBuild(String module) {
        module(module);
        return hopperModules.contains(module);
    }

    static boolean isHopperResource(String resource) {
        return resource.endsWith(".sm90a.ptx") || resource.endsWith(".sm90a.cubin");
    }

    /**
     * The machine code a module loads from on a device of compute capability major.minor, or null for its PTX: on 9.0
     * {@code <name>.sm90a.cubin} (assembled from the sm90a PTX), or {@code <name>.sm90.cubin} for a module that has
     * no sm90a build (from its portable PTX). What the PTX would be chosen from, in the same order.
     */
    static String cubinFor(String module, int major, int minor, Predicate<String> exists) {
        if (major != 9 || minor != 0 || !CUBINS) return null;
        if (HOPPER_BUILDS && exists.test(RESOURCE_DIR + module + ".sm90a.ptx")) {
            String hopper = RESOURCE_DIR + module + ".sm90a.cubin";
            return exists.test(hopper) ? hopper : null;
        }
        String portable = RESOURCE_DIR + module + ".sm90.cubin";
        return exists.test(portable) ? portable : null;
    }

    /** Which resource a module loads from on a device of compute capability major.minor. */
    static String resourceFor(String module, int major, int minor, Predicate<String> exists) {
        String hopper = RESOURCE_DIR + module + ".sm90a.ptx";
        if (major == 9 && minor == 0 && HOPPER_BUILDS && exists.test(hopper)) return hopper;
        String portable = RESOURCE_DIR + module + ".ptx";
        if (exists.test(portable)) return portable;
        throw new IllegalArgumentException("no PTX for kernel module '" + module + "': resource " + portable
                + " is not on the classpath (is native/" + module + ".cu built with 'make -C native' and"
                + " kernels-ptx/ packaged?)");
    }

    static boolean resourceExists(String path) {
        return PtxModules.class.getClassLoader().getResource(path) != null;
    }

    static byte[] readResource(String path) {
        try (InputStream in = PtxModules.class.getClassLoader().getResourceAsStream(path)) {
            if (in == null) throw new IllegalArgumentException("resource " + path + " not found on the classpath");
            return in.readAllBytes();
        } catch (IOException e) {
            throw new UncheckedIOException("reading resource " + path, e);
        }
    }
}
