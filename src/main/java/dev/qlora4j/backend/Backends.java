package dev.qlora4j.backend;

import dev.qlora4j.backend.cpu.CpuBackend;

import java.util.Locale;

/** Chooses a backend from a device name: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when usable). */
public final class Backends {
    private Backends() {}

    public static Backend create(String device) {
        String d = device == null ? "auto" : device.toLowerCase(Locale.ROOT).trim();
        if (d.equals("cpu")) return new CpuBackend();
        if (d.equals("auto")) return cudaAvailable() ? cuda(0) : new CpuBackend();
        if (d.equals("cuda")) return cuda(0);
        if (d.startsWith("cuda:")) return cuda(Integer.parseInt(d.substring(5)));
        throw new IllegalArgumentException("unknown device '" + device + "': use cpu, cuda, cuda:N or auto");
    }

    /** True when the CUDA backend is on the class path and a GPU with a driver is present. */
    public static boolean cudaAvailable() {
        try {
            Class<?> c = Class.forName("dev.qlora4j.backend.cuda.CudaBackend");
            return (boolean) c.getMethod("isAvailable").invoke(null);
        } catch (ReflectiveOperationException | LinkageError e) {
            return false;
        }
    }

    private static Backend cuda(int index) {
        try {
            Class<?> c = Class.forName("dev.qlora4j.backend.cuda.CudaBackend");
            return (Backend) c.getMethod("create", int.class).invoke(null, index);
        } catch (ClassNotFoundException e) {
            throw new UnsupportedOperationException("this build has no CUDA backend: use --device cpu");
        } catch (java.lang.reflect.InvocationTargetException e) {
            if (e.getCause() instanceof RuntimeException re) throw re;
            throw new IllegalStateException("could not start the CUDA backend: " + e.getCause(), e.getCause());
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("could not start the CUDA backend: " + e, e);
        }
    }
}
