package dev.qlora4j.backend.cuda;

/**
 * How a row-major LoRA product C [m, n] = alpha op(A) [m, k] op(B) [k, n] + beta C maps onto native/lora_gemm.cu's
 * kernels, or that it does not (then the caller keeps cuBLAS). Pure arithmetic on shapes, so CI checks it without a
 * GPU (LoraGemmPlanTest). Storage as {@link CudaLora#gemm}: A [m, k] (row stride lda) or [k, m] when transA, B [k, n]
 * (ldb) or [n, k] when transB, C [m, n] (ldc).
 *
 * <p>The kernels compute C' [M, N] (+)= A' B' with N (the small side) at most 64:
 * <pre>
 *   !transA, n <= 64:  A' = A [m, k] ("am"), B' = B [n, k] ("bn") or [k, n] ("bk"); C' = C           h = x A^T, gh = s gy B
 *    transA, n <= 64:  A' = A [k, m] ("ak"), B' = B [k, n] ("bk");                   C' = C           dB = s gy^T h
 *    transA, m <= 64:  A' = B [k, n] ("ak"), B' = A [k, m] ("bk");                   C' = C^T         dA = gh^T x
 * </pre>
 * C' (i, j) is stored at c + i ldcM + j ldcN (elements), so the third case writes C transposed in place.
 *
 * @param kernel     the extern "C" name in lora_gemm.ptx
 * @param swapped    true when A' is the caller's B (third case)
 * @param rows       M: rows of C' (the large side)
 * @param cols       N: columns of C' (the rank side, <= 64, a multiple of 8)
 * @param depth      K
 * @param ldcM       C' row stride in elements
 * @param ldcN       C' column stride in elements
 * @param splits     S: slices of K's 64-wide tiles, reduced in slice order by the last block of each row block
 * @param blocks     grid size: ceil(rows / 64) * splits
 * @param sharedBytes dynamic shared memory per block
 */
public record LoraGemmPlan(String kernel, boolean swapped, int rows, int cols, int depth, long ldcM, long ldcN, int splits,
                           int blocks, int sharedBytes) {
    /** Threads per block (4 warps), rows of C' per block, k per tile, ring stages: lora_gemm.cu's lg:: constants. */
    static final int THREADS = 128, BLOCK_ROWS = 64, TILE_K = 64, STAGES = 4;
    /** The largest rank side the kernels take (NP = 64). */
    static final int MAX_COLS = 64;
    /** At most this many K slices (each slice at least 2 tiles): past it the last block's reduction costs more than it saves. */
    static final int MAX_SPLITS = 32;
    /** Shared memory per SM the blocks-per-SM estimate assumes (H100 / H200: 228 KiB, 1 KiB reserved per block). */
    static final int SM_SHARED = 228 * 1024;

    /** Row blocks: the arrival counters the launch uses (one per row block, when splits > 1). */
    public int rowBlocks() { return ceilDiv(rows, BLOCK_ROWS); }

    /** The padded rank side the kernel was compiled for (16, 32, 48 or 64). */
    public int paddedCols() { return ceilDiv(cols, 16) * 16; }

    /** Floats of split-K scratch: one slot of NP / 2 floats per thread of every block (0 when splits == 1). */
    public long partialFloats() { return splits == 1 ? 0 : (long) blocks * THREADS * (paddedCols() / 2); }

    /**
     * The plan for a row-major product, or null when the kernels do not take it (then cuBLAS does).
     *
     * @param aligned      whether A, B are 16-byte aligned and C is aligned to its element size (the caller checks pointers)
     * @param maxCounters  arrival counters available (CudaContext.ARRIVAL_COUNTERS)
     * @param multiprocessors SMs of the device: the grid is sized to one wave of resident blocks
     */
    public static LoraGemmPlan of(boolean transA, boolean transB, int m, int n, int k, long lda, long ldb, long ldc,
                                  boolean aligned, int maxCounters, int multiprocessors) {
        if (!aligned || m <= 0 || n <= 0 || k <= 0 || lda % 8 != 0 || ldb % 8 != 0) return null;
        String layout;
        boolean swapped = false;
        int rows, cols;
        long ldcM, ldcN;
        if (!transA && n <= MAX_COLS) {
            // A [m, k]: k contiguous; B [n, k] (k contiguous) or [k, n] (n contiguous); the stores take pairs of columns
            if (k % 8 != 0 || n % 8 != 0) return null;
            layout = transB ? "am_bn" : "am_bk";
            rows = m; cols = n; ldcM = ldc; ldcN = 1;
        } else if (transA && !transB && n <= MAX_COLS) {
            if (m % 8 != 0 || n % 8 != 0) return null;
            layout = "ak_bk";
            rows = m; cols = n; ldcM = ldc; ldcN = 1;
        } else if (transA && !transB && m <= MAX_COLS) {
            if (m % 8 != 0 || n % 8 != 0) return null;
            layout = "ak_bk";
            swapped = true;
            rows = n; cols = m; ldcM = 1; ldcN = ldc;
        } else {
            return null;
        }
        int np = ceilDiv(cols, 16) * 16;
        int rowBlocks = ceilDiv(rows, BLOCK_ROWS);
        int tiles = ceilDiv(k, TILE_K);
        int shared = STAGES * stageBytes(np, layout.endsWith("bn"));
        int resident = multiprocessors * blocksPerSm(shared);
        int splits = Math.max(1, Math.min(Math.min(resident / rowBlocks, tiles / 2), MAX_SPLITS));
        if (rowBlocks > maxCounters) splits = 1;
        long blocks = (long) rowBlocks * splits;
        if (blocks > Integer.MAX_VALUE) return null;
        return new LoraGemmPlan("lora_gemm_" + layout + "_n" + np, swapped, rows, cols, k, ldcM, ldcN, splits, (int) blocks,
                shared);
    }

    /** Bytes of one ring stage: the 64 x 64 A tile and the B tile, rows padded to an odd number of 16-byte chunks. */
    static int stageBytes(int np, boolean bn) {
        int row64 = (TILE_K / 8 + 1) * 16;
        int aTile = 64 * row64;
        int bTile = bn ? np * row64 : TILE_K * (np / 8 + 1) * 16;
        return aTile + bTile;
    }

    /** Resident blocks per SM by shared memory (registers allow 4+: at most 96 per thread, 128 threads), at most 4. */
    static int blocksPerSm(int sharedBytes) {
        return Math.max(1, Math.min(4, SM_SHARED / (sharedBytes + 1024)));
    }

    private static int ceilDiv(int a, int b) { return (a + b - 1) / b; }
}
