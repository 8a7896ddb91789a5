package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.qlora4j.cuda.GpuSupport.Dev;
import dev.qlora4j.tensor.Half;
import java.lang.foreign.MemorySegment;
import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Stream capture of two kernel launches (f32 -> bf16 -> f32, i.e. rounding to bf16) into a graph,
 * replayed twice on fresh inputs: each replay reads the buffers' current contents and gives the
 * same result as the CPU rounding.
 */
@Tag("gpu")
class GraphCaptureGpuTest {

    @ParameterizedTest
    @ValueSource(strings = {"ffm", "jcuda"})
    void capturedLaunchesReplayOnNewData(String binding) {
        CudaDriver d = GpuSupport.driver(binding);
        PtxModules m = PtxModules.forCurrentContext(d);
        long toBf16 = m.function("cast", "cast_f32_to_bf16");   // resolved before capture: no module loads while capturing
        long toF32 = m.function("cast", "cast_bf16_to_f32");
        int n = 300_007;
        Random rnd = new Random();
        long stream = d.streamCreate(true);
        long graph = 0;
        long exec = 0;
        try (Dev x = Dev.alloc(d, 4L * n); Dev mid = Dev.alloc(d, 2L * n); Dev z = Dev.alloc(d, 4L * n)) {
            d.streamBeginCapture(stream, CaptureMode.GLOBAL);
            GpuSupport.launch1d(d, toBf16, n, stream, KernelArgs.of().ptr(x.ptr()).ptr(mid.ptr()).i64(n));
            GpuSupport.launch1d(d, toF32, n, stream, KernelArgs.of().ptr(mid.ptr()).ptr(z.ptr()).i64(n));
            graph = d.streamEndCapture(stream);
            exec = d.graphInstantiate(graph);
            for (int replay = 0; replay < 2; replay++) {
                float[] in = new float[n];
                for (int i = 0; i < n; i++) in[i] = (float) (rnd.nextGaussian() * Math.pow(2, rnd.nextInt(-20, 20)));
                d.copyToDevice(x.ptr(), MemorySegment.ofArray(in));
                d.memsetD32(z.ptr(), 0x7FC00000, n);           // poison: NaN
                // The copy and memset ran on the legacy stream, which a non-blocking stream does not wait for.
                d.contextSynchronize();
                d.graphLaunch(exec, stream);
                d.streamSynchronize(stream);
                float[] out = GpuSupport.downloadFloats(d, z.ptr(), n);
                for (int i = 0; i < n; i++) {
                    if (Float.floatToRawIntBits(out[i]) != Float.floatToRawIntBits(Half.roundBf16(in[i]))) {
                        fail("replay " + replay + " element " + i + ": " + in[i] + " -> " + out[i]
                                + ", expected " + Half.roundBf16(in[i]));
                    }
                }
            }
            // Direct launches of the same kernels agree with the replay.
            float[] viaGraph = GpuSupport.downloadFloats(d, z.ptr(), n);
            d.memsetD32(z.ptr(), 0x7FC00000, n);
            d.contextSynchronize();
            GpuSupport.launch1d(d, toBf16, n, stream, KernelArgs.of().ptr(x.ptr()).ptr(mid.ptr()).i64(n));
            GpuSupport.launch1d(d, toF32, n, stream, KernelArgs.of().ptr(mid.ptr()).ptr(z.ptr()).i64(n));
            d.streamSynchronize(stream);
            float[] direct = GpuSupport.downloadFloats(d, z.ptr(), n);
            for (int i = 0; i < n; i++) assertEquals(Float.floatToRawIntBits(viaGraph[i]), Float.floatToRawIntBits(direct[i]));
        } finally {
            if (exec != 0) d.graphExecDestroy(exec);
            if (graph != 0) d.graphDestroy(graph);
            d.streamDestroy(stream);
        }
    }
}
