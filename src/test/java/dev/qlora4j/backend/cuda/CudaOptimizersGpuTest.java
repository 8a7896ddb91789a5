package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertBitEqual;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.qlora4j.optim.AdamW;
import dev.qlora4j.optim.AdamW8bit;
import dev.qlora4j.optim.AdamW8bitConfig;
import dev.qlora4j.optim.AdamWConfig;
import dev.qlora4j.optim.Optimizer;
import dev.qlora4j.optim.Param;
import dev.qlora4j.optim.ParamGroup;
import dev.qlora4j.optim.StateStorage;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * CudaAdamW and CudaAdamW8bit (device and paged state) against their CPU twins AdamW and AdamW8bit: several steps
 * over parameters of mixed sizes (8-bit with full and partial last blocks, float32-state small tensors, two weight
 * decay groups, a non-finite gradient element), fresh random gradients each step; parameters and every state
 * slot compared after the last step, then the GPU state dict resumed on the CPU twin for one more step.
 */
@Tag("gpu")
class CudaOptimizersGpuTest {
    // 5000: 8-bit, partial last block; 4096: 8-bit, exact blocks; 65536: 8-bit, many blocks; 300 and 4095: float32 state
    private static final int[] SIZES = {5000, 300, 65536, 4096, 4095};
    private static final int STEPS = 6;

    /** A device parameter whose gradient is replaced every step. */
    private static final class DeviceParam implements Param {
        final String name;
        final Tensor value;
        Tensor grad;

        DeviceParam(String name, Tensor value) {
            this.name = name;
            this.value = value;
        }

        @Override public String name() { return name; }
        @Override public Tensor value() { return value; }
        @Override public Tensor grad() { return grad; }
    }

    @ParameterizedTest
    @EnumSource(StateStorage.class)
    void adamW8bitMatchesTheCpuTwin(StateStorage storage) {
        try (CudaBackend b = backend(DType.F32, false)) {
            AdamW8bitConfig cfg = new AdamW8bitConfig(2e-3, 0.9, 0.995, 1e-8, 0.05, 4096, storage);
            Run run = new Run(b, random("adamW8bit " + storage));
            poison(b, DType.U8, 65536);   // state buffers of that size class must be zeroed by the optimizer
            AdamW8bit cpu = new AdamW8bit(run.hostGroups(), cfg);
            try (CudaAdamW8bit gpu = new CudaAdamW8bit(b, run.deviceGroups(), cfg)) {
                run.steps(cpu, gpu);
                for (int i = 0; i < SIZES.length; i++) {
                    String name = "p" + i;
                    assertEquals(SIZES[i] >= 4096, gpu.hasEightBitState(name), name + " 8-bit state");
                }
                compareStates(cpu.stateDict(), gpu.stateDict());
                if (storage == StateStorage.PAGED) {
                    assertEquals(0, gpu.deviceStateBytes(), "paged state takes no GPU memory");
                    assertTrue(gpu.hostStateBytes() > 0);
                } else {
                    assertEquals(0, gpu.hostStateBytes());
                }
                run.resumeOnCpu(new AdamW8bit(run.hostGroups(), cfg), cpu, gpu);
            }
            run.close();
        }
    }

    @ParameterizedTest
    @EnumSource(StateStorage.class)
    void adamWMatchesTheCpuTwinBitForBit(StateStorage storage) {
        try (CudaBackend b = backend(DType.F32, false)) {
            AdamWConfig cfg = new AdamWConfig(2e-3, 0.9, 0.995, 1e-8, 0.05, storage);
            Run run = new Run(b, random("adamW " + storage));
            AdamW cpu = new AdamW(run.hostGroups(), cfg);
            try (CudaAdamW gpu = new CudaAdamW(b, run.deviceGroups(), cfg)) {
                run.steps(cpu, gpu);
                compareStates(cpu.stateDict(), gpu.stateDict());
                run.resumeOnCpu(new AdamW(run.hostGroups(), cfg), cpu, gpu);
            }
            run.close();
        }
    }

    /** The same parameters and per-step gradients on the host and on the device. */
    private static final class Run {
        final CudaBackend b;
        final Random r;
        final List<Param> host = new ArrayList<>();
        final List<float[]> hostGrad = new ArrayList<>();
        final List<DeviceParam> device = new ArrayList<>();

        Run(CudaBackend b, Random r) {
            this.b = b;
            this.r = r;
            for (int i = 0; i < SIZES.length; i++) {
                float[] v = gaussian(r, SIZES[i], 0.5);
                float[] g = new float[SIZES[i]];
                host.add(Param.of("p" + i, v.clone(), g));
                hostGrad.add(g);
                device.add(new DeviceParam("p" + i, b.upload(Tensor.of(v.clone(), SIZES[i]))));
            }
        }

        // p0, p1, p2 decay; p3, p4 do not (as ParamGroups.split puts biases and norms apart)
        List<ParamGroup> hostGroups() {
            return List.of(new ParamGroup(host.subList(0, 3), 0.05), new ParamGroup(host.subList(3, 5), 0.0));
        }

        List<ParamGroup> deviceGroups() {
            List<Param> d = new ArrayList<>(device);
            return List.of(new ParamGroup(d.subList(0, 3), 0.05), new ParamGroup(d.subList(3, 5), 0.0));
        }

        void steps(Optimizer cpu, Optimizer gpu) {
            for (int s = 0; s < STEPS; s++) {
                double lr = 2e-3 * (1 - 0.1 * s);   // a schedule, as the Trainer sets it before each step
                cpu.setLr(lr);
                gpu.setLr(lr);
                for (int i = 0; i < SIZES.length; i++) {
                    float[] g = gaussian(r, SIZES[i], s == 0 ? 1.0 : 0.05 * (s + 1));
                    if (s == 2 && i == 0) g[17] = Float.POSITIVE_INFINITY;   // the 8-bit kernel skips that element
                    if (s == 3 && i == 2) g[1000] = Float.NaN;
                    System.arraycopy(g, 0, hostGrad.get(i), 0, g.length);
                    DeviceParam d = device.get(i);
                    if (d.grad != null) d.grad.close();
                    d.grad = b.upload(Tensor.of(g, g.length));
                }
                cpu.step();
                gpu.step();
            }
            for (int i = 0; i < SIZES.length; i++) {
                float[] want = host.get(i).value().toFloatArray();
                float[] got = b.toHost(device.get(i).value).toFloatArray();
                assertBitEqual(got, want, "parameter p" + i + " after " + STEPS + " steps");
            }
        }

        /** The GPU's state dict loaded into a fresh CPU twin gives the same next step as the CPU optimizer itself. */
        void resumeOnCpu(Optimizer fresh, Optimizer cpu, Optimizer gpu) {
            fresh.loadStateDict(gpu.stateDict());
            List<float[]> before = new ArrayList<>();
            for (Param p : host) before.add(p.value().toFloatArray());
            for (int i = 0; i < SIZES.length; i++) {
                float[] g = gaussian(r, SIZES[i], 0.1);
                System.arraycopy(g, 0, hostGrad.get(i), 0, g.length);
            }
            cpu.step();
            List<float[]> viaCpu = new ArrayList<>();
            for (int i = 0; i < SIZES.length; i++) {
                viaCpu.add(host.get(i).value().toFloatArray());
                host.get(i).value().segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(before.get(i)));
            }
            fresh.setLr(cpu.lr());
            fresh.step();
            for (int i = 0; i < SIZES.length; i++) {
                assertBitEqual(host.get(i).value().toFloatArray(), viaCpu.get(i), "p" + i + " after resuming the GPU state on the CPU");
            }
        }

        void close() {
            for (DeviceParam d : device) {
                d.value.close();
                if (d.grad != null) d.grad.close();
            }
        }
    }

    /** Same keys, dtypes and values (codes and absmax bit for bit). */
    private static void compareStates(Map<String, Tensor> cpu, Map<String, Tensor> gpu) {
        assertEquals(cpu.keySet(), gpu.keySet(), "state dict keys");
        for (String k : cpu.keySet()) {
            Tensor want = cpu.get(k), got = gpu.get(k);
            assertEquals(want.dtype(), got.dtype(), k + " dtype");
            assertEquals(want.numel(), got.numel(), k + " numel");
            if (want.dtype() == DType.U8) {
                byte[] w = want.segment().toArray(ValueLayout.JAVA_BYTE), g = got.segment().toArray(ValueLayout.JAVA_BYTE);
                int differ = 0, worst = 0;
                for (int i = 0; i < w.length; i++) {
                    int d = Math.abs((w[i] & 0xFF) - (g[i] & 0xFF));
                    if (d != 0) differ++;
                    worst = Math.max(worst, d);
                }
                assertEquals(0, differ, k + ": " + differ + " codes differ (largest difference " + worst + ")");
            } else {
                assertBitEqual(got.toFloatArray(), want.toFloatArray(), k);
            }
        }
    }
}
