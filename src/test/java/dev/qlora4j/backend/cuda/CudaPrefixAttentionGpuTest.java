package dev.qlora4j.backend.cuda;

import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.assertClose;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.backend;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.gaussian;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.poison;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.random;
import static dev.qlora4j.backend.cuda.CudaCoreTestSupport.values;

import dev.qlora4j.backend.AttentionResult;
import dev.qlora4j.backend.cpu.CpuBackend;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Random;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * native/prefix_attention.cu against its CPU twin (backend/cpu/PrefixAttention) on fresh random data: the merge
 * with a sequence attention result (the CPU's attentionTrain, packed segments), and the backward (dQ added into
 * a random gradient, dK/dV of the prefix added into random F32 accumulators). GQA, head dims of 16..256 (not
 * all multiples of 32), P from 1 to 37, token counts that leave partial warps and several token chunks.
 * Also the whole composition on the GPU (attentionTrain -> prefixAttention -> attentionBackward ->
 * prefixAttentionBackward) against the same on the CPU. F32 within 1e-5 relative; BF16 2e-2.
 */
@Tag("gpu")
class CudaPrefixAttentionGpuTest {
    @ParameterizedTest
    @CsvSource({
            "F32, 2, 45, 4, 2, 16, 5, true",
            "F32, 1, 300, 8, 2, 64, 20, false",
            "F32, 3, 70, 4, 4, 128, 1, true",
            "F32, 1, 67, 6, 3, 48, 37, true",
            "F32, 1, 40, 2, 1, 256, 8, false",
            "BF16, 2, 77, 8, 2, 128, 10, true",
    })
    void mergeAndBackwardMatchCpu(DType act, int batch, int tokens, int heads, int kvHeads, int headDim, int prefix,
                                  boolean packed) {
        Random r = random("prefix attention " + act + " T=" + tokens + " D=" + headDim + " P=" + prefix);
        double tol = act == DType.F32 ? 1e-5 : 2e-2;
        try (CudaBackend b = backend(act, false); CpuBackend cpu = new CpuBackend()) {
            int n = batch * tokens, qw = heads * headDim, kw = kvHeads * headDim;
            float scale = (float) (1 / Math.sqrt(headDim));
            float[] q = gaussian(r, n * qw, 1), k = gaussian(r, n * kw, 1), v = gaussian(r, n * kw, 1);
            float[] kp = gaussian(r, prefix * kw, 1), vp = gaussian(r, prefix * kw, 1), g = gaussian(r, n * qw, 1);
            float[] gq0 = gaussian(r, n * qw, 0.5), gk0 = gaussian(r, prefix * kw, 0.5), gv0 = gaussian(r, prefix * kw, 0.5);
            int[] segs = packed ? segments(r, batch, tokens) : null;
            Tensor sc = segs == null ? null : Tensor.ofInts(segs, n), sd = sc == null ? null : b.upload(sc);
            Tensor qc = ref(q, act, n, qw), kc = ref(k, act, n, kw), vc = ref(v, act, n, kw);
            Tensor kpc = ref(kp, act, prefix, kw), vpc = ref(vp, act, prefix, kw), gc = ref(g, act, n, qw);
            Tensor qd = up(b, q, act, n, qw), kd = up(b, k, act, n, kw), vd = up(b, v, act, n, kw);
            Tensor kpd = up(b, kp, act, prefix, kw), vpd = up(b, vp, act, prefix, kw), gd = up(b, g, act, n, qw);

            // 1. the merge alone, from the same sequence result (the CPU's, rounded to act)
            AttentionResult seqCpu = cpu.attentionTrain(qc, kc, vc, sc, batch, heads, kvHeads, headDim, scale, 0);
            AttentionResult seqCpuR = new AttentionResult(ref(seqCpu.out().toFloatArray(), act, n, qw), seqCpu.lse());
            AttentionResult seqDev = new AttentionResult(up(b, seqCpuR.out().toFloatArray(), act, n, qw), b.upload(seqCpu.lse()));
            poison(b, act, n, qw);
            poison(b, DType.F32, batch, heads, tokens);
            AttentionResult ours = b.prefixAttention(qd, kpd, vpd, seqDev, batch, heads, kvHeads, headDim, scale);
            AttentionResult want = cpu.prefixAttention(qc, kpc, vpc, seqCpuR, batch, heads, kvHeads, headDim, scale);
            assertClose(values(b, ours.out()), want.out().toFloatArray(), tol, "prefix merge out");
            assertClose(values(b, ours.lse()), want.lse().toFloatArray(), act == DType.F32 ? 1e-6 : 1e-2, "prefix merge lse");

            // 2. the backward alone, from the GPU's merged values (as act rounds them) on both sides
            AttentionResult mergedCpu = new AttentionResult(Tensor.of(values(b, ours.out()), n, qw), Tensor.of(values(b, ours.lse()),
                    batch, heads, tokens));
            Tensor gqd = up(b, gq0, act, n, qw), gkd = b.upload(Tensor.of(gk0.clone(), prefix, kw)), gvd = b.upload(Tensor.of(gv0.clone(), prefix, kw));
            Tensor gqc = ref(gq0, act, n, qw), gkc = Tensor.of(gk0.clone(), prefix, kw), gvc = Tensor.of(gv0.clone(), prefix, kw);
            poison(b, DType.F32, n, heads, prefix);
            b.prefixAttentionBackward(qd, kpd, vpd, ours, gd, gqd, gkd, gvd, batch, heads, kvHeads, headDim, scale);
            cpu.prefixAttentionBackward(qc, kpc, vpc, mergedCpu, gc, gqc, gkc, gvc, batch, heads, kvHeads, headDim, scale);
            assertClose(values(b, gqd), gqc.toFloatArray(), tol, "prefix dQ (added to a gradient)");
            assertClose(values(b, gkd), gkc.toFloatArray(), act == DType.F32 ? 1e-5 : 3e-2, "prefix dK (accumulated)");
            assertClose(values(b, gvd), gvc.toFloatArray(), act == DType.F32 ? 1e-5 : 3e-2, "prefix dV (accumulated)");

            // 3. the composition a decoder layer runs, on each backend from the same inputs
            if (act == DType.F32) {
                Tensor[] gpu = compose(b, qd, kd, vd, sd, kpd, vpd, gd, batch, heads, kvHeads, headDim, prefix, scale);
                Tensor[] host = compose(cpu, qc, kc, vc, sc, kpc, vpc, gc, batch, heads, kvHeads, headDim, prefix, scale);
                String[] names = {"out", "dQ", "dK", "dV", "dK prefix", "dV prefix"};
                for (int i = 0; i < names.length; i++) assertClose(values(b, gpu[i]), host[i].toFloatArray(), 2e-5, "composed " + names[i]);
            }
        }
    }

    /** {out, dQ, dK, dV, dK prefix, dV prefix} of attention over [prefix; causal sequence]. */
    private static Tensor[] compose(dev.qlora4j.backend.Backend be, Tensor q, Tensor k, Tensor v, Tensor segs, Tensor kp, Tensor vp,
                                    Tensor g, int batch, int heads, int kvHeads, int headDim, int prefix, float scale) {
        AttentionResult seq = be.attentionTrain(q, k, v, segs, batch, heads, kvHeads, headDim, scale, 0);
        AttentionResult merged = be.prefixAttention(q, kp, vp, seq, batch, heads, kvHeads, headDim, scale);
        Tensor[] gs = be.attentionBackward(q, k, v, segs, merged, g, batch, heads, kvHeads, headDim, scale, 0);
        Tensor gk = be.upload(Tensor.zeros(DType.F32, prefix, kvHeads * headDim)), gv = be.upload(Tensor.zeros(DType.F32, prefix, kvHeads * headDim));
        be.prefixAttentionBackward(q, kp, vp, merged, g, gs[0], gk, gv, batch, heads, kvHeads, headDim, scale);
        return new Tensor[] {merged.out(), gs[0], gs[1], gs[2], gk, gv};
    }

    private static int[] segments(Random r, int batch, int tokens) {
        int[] segs = new int[batch * tokens];
        for (int row = 0; row < batch; row++) {
            int id = 0, left = 1 + r.nextInt(tokens);
            for (int t = 0; t < tokens; t++) {
                if (left-- == 0) { id++; left = r.nextInt(tokens); }
                segs[row * tokens + t] = id;
            }
        }
        return segs;
    }

    private static Tensor up(CudaBackend b, float[] v, DType act, int... shape) {
        return b.upload(Tensor.fromFloats(v, act, shape));
    }

    private static Tensor ref(float[] v, DType dtype, int... shape) {
        return Tensor.of(Tensor.fromFloats(v, dtype, shape).toFloatArray(), shape);
    }
}
