package dev.qlora4j.cuda;

/**
 * How a row-major product maps onto column-major cuBLAS.
 *
 * <p>We want, in row-major storage, {@code C[m,n] = op(A)[m,k] · op(B)[k,n]}, where A is stored as
 * [m,k] (or [k,m] when transA) and B as [k,n] (or [n,k] when transB). The linear layer
 * {@code y[m,n] = x[m,k] · W[n,k]^T} is transA=false, transB=true.
 *
 * <p>A row-major [r,c] matrix read column-major with leading dimension c is its transpose [c,r].
 * So cuBLAS, reading our C buffer with ldc=n, sees C^T [n,m], and
 * {@code C^T = op(B)^T · op(A)^T}: cuBLAS' "A" is our B, its "B" is our A, with cuBLAS sizes
 * (m', n', k') = (n, m, k).
 * <ul>
 *   <li>Our B read column-major is B^T as stored; we need op(B)^T: that is "as read" (N) when
 *       !transB (stored [k,n], ld = n) and transposed (T) when transB (stored [n,k], ld = k).</li>
 *   <li>Our A likewise: N with ld = k when !transA (stored [m,k]), T with ld = m when transA (stored [k,m]).</li>
 * </ul>
 * Linear layer: cublasGemmEx(T, N, n, m, k, W, lda=k, x, ldb=k, y, ldc=n).
 *
 * @param opA   cuBLAS transa (0 = N, 1 = T), applied to cuBLAS' first operand = our B
 * @param opB   cuBLAS transb, applied to cuBLAS' second operand = our A
 * @param m     cuBLAS m = our n
 * @param n     cuBLAS n = our m
 * @param k     cuBLAS k = our k
 * @param lda   leading dimension of our B buffer
 * @param ldb   leading dimension of our A buffer
 * @param ldc   leading dimension of our C buffer (= our n)
 */
public record RowMajorGemm(int opA, int opB, int m, int n, int k, int lda, int ldb, int ldc) {
    public static final int OP_N = 0;
    public static final int OP_T = 1;

    /** The column-major call for row-major C[m,n] = op(A)[m,k] · op(B)[k,n]; operands are passed swapped (B first). */
    public static RowMajorGemm of(boolean transA, boolean transB, int m, int n, int k) {
        if (m <= 0 || n <= 0 || k <= 0) {
            throw new IllegalArgumentException("GEMM sizes must be positive, got m=" + m + " n=" + n + " k=" + k);
        }
        return new RowMajorGemm(transB ? OP_T : OP_N, transA ? OP_T : OP_N, n, m, k,
                transB ? k : n, transA ? m : k, n);
    }
}
