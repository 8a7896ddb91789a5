package dev.qlora4j.backend.cuda;

/**
 * CPU twin of native/lora_gemm.cu: the row-major LoRA products C [m, n] = alpha op(A) op(B) + beta C0 of BF16
 * operands (given as the float values they hold), with the storage of {@link CudaLora#gemm} (A [m, k] or [k, m] when
 * transA, B [k, n] or [n, k] when transB, row strides lda / ldb / ldc).
 *
 * <p>{@link #element} is the exact reference: float32 products (exact: two BF16 values) summed in float64, with the
 * sum of |products| for tolerances. {@link #planned} is the kernels' own summation structure in float32 (per row
 * block, K's 64-wide tiles cut into the plan's slices, each slice summed, the slices added in order, alpha / beta at
 * the end) driven by a {@link LoraGemmPlan} exactly as {@link LoraGemmKernels} launches it (operands swapped, C
 * written through the plan's strides): CI checks the plan's mapping of every product with it, without a GPU.
 */
final class LoraGemmReference {
    private LoraGemmReference() {}

    /** A product's shape and storage. */
    record Product(boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldc, float alpha, float beta) {
        float a(float[] a, int i, int kk) { return transA ? a[kk * lda + i] : a[i * lda + kk]; }

        float b(float[] b, int kk, int j) { return transB ? b[j * ldb + kk] : b[kk * ldb + j]; }

        int aLength() { return (transA ? k : m) * lda; }

        int bLength() { return (transB ? n : k) * ldb; }

        int cLength() { return m * ldc; }
    }

    /** {value, sum of |alpha a b| + |beta c0|} of C [i, j] in float64. */
    static double[] element(Product p, float[] a, float[] b, float[] c0, int i, int j) {
        double s = 0, mag = 0;
        for (int kk = 0; kk < p.k(); kk++) {
            double v = (double) (p.a(a, i, kk) * p.b(b, kk, j));   // exact in float32
            s += v;
            mag += Math.abs(v);
        }
        double old = p.beta() == 0f ? 0 : p.beta() * (double) c0[i * p.ldc() + j];
        return new double[] {p.alpha() * s + old, Math.abs(p.alpha()) * mag + Math.abs(old)};
    }

    /**
     * C as the planned kernels sum it (float32), written into a copy of c0 through the plan's strides; elements of
     * c0 the product does not cover are left as they are.
     */
    static float[] planned(LoraGemmPlan plan, Product p, float[] a, float[] b, float[] c0) {
        float[] c = c0.clone();
        // operands as LoraGemmKernels passes them: A' and B' (swapped in the third case), layouts from the kernel name
        boolean ak = plan.kernel().contains("_ak_"), bn = plan.kernel().contains("_bn_");
        float[] a2 = plan.swapped() ? b : a, b2 = plan.swapped() ? a : b;
        int lda2 = plan.swapped() ? p.ldb() : p.lda(), ldb2 = plan.swapped() ? p.lda() : p.ldb();
        int tiles = (plan.depth() + LoraGemmPlan.TILE_K - 1) / LoraGemmPlan.TILE_K, s = plan.splits();
        for (int i = 0; i < plan.rows(); i++) {
            for (int j = 0; j < plan.cols(); j++) {
                float total = 0f;
                for (int sp = 0; sp < s; sp++) {
                    int t0 = (int) ((long) sp * tiles / s), t1 = (int) ((long) (sp + 1) * tiles / s);
                    float slice = 0f;
                    for (int kk = t0 * LoraGemmPlan.TILE_K; kk < Math.min(t1 * LoraGemmPlan.TILE_K, plan.depth()); kk++) {
                        float av = ak ? a2[kk * lda2 + i] : a2[i * lda2 + kk];
                        float bv = bn ? b2[j * ldb2 + kk] : b2[kk * ldb2 + j];
                        slice += av * bv;
                    }
                    total += slice;
                }
                int at = (int) (i * plan.ldcM() + j * plan.ldcN());
                float v = p.alpha() * total;
                if (p.beta() != 0f) v += p.beta() * c0[at];
                c[at] = v;
            }
        }
        return c;
    }
}
