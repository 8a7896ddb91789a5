package dev.qlora4j.backend.cuda;

import dev.qlora4j.cuda.Dim3;
import dev.qlora4j.cuda.KernelArgs;
import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.List;

/**
 * Launchers of the code decode's kernels that read only the tile layout (native/nf4_gemv.cu, nf4_gemv_code.cuh;
 * {@link Q4Layout#TILES}): the joint gate / up decode (silu_mul in its epilogue), the persistent launches (a grid of two
 * or three blocks per SM, or one SM-wide block of three 8-warp groups (persistentForm), walking a weight's tiles with one
 * ring of loads) and the grouped persistent launch (q / k / v in one).
 * Each gives the values of {@link Nf4GemvKernels#gemv}'s CODE decode (and silu_mul) bit for bit.
 */
final class Nf4TileGemvKernels {
    private Nf4TileGemvKernels() {}

    /**
     * Whether the joint gate / up decode (native/nf4_gemv.cu, q4v2code_swiglu_*_tiles) takes gate and up for rows of x:
     * both tiled, the code decode applies, BF16 compute (the kernels' one form: CUDA activations are F32 or BF16), the
     * same shape, quantization type, blocksize, nesting (nested blocksize and code table), and 1..16 rows.
     */
    static boolean swiGluApplies(CudaQuant4bit gate, CudaQuant4bit up, int rows) {
        return rows >= 1 && rows <= Nf4GemvKernels.CODE_MAX_ROWS
                && gate.layout() == Q4Layout.TILES && up.layout() == Q4Layout.TILES
                && gate.computeDType() == DType.BF16 && Nf4GemvKernels.codeApplies(gate)
                && gate.outFeatures() == up.outFeatures()
                && gate.inFeatures() == up.inFeatures() && gate.quantType() == up.quantType()
                && gate.blocksize() == up.blocksize() && gate.nested() == up.nested()
                && gate.nestedBlocksize() == up.nestedBlocksize() && gate.computeDType() == up.computeDType()
                && (!gate.nested() || java.util.Arrays.equals(gate.nestedCodeHost(), up.nestedCodeHost()));
    }

    /**
     * y [rows, out] = silu(xc gate^T) * (xc up^T) in y's dtype, one launch: the two CODE GEMVs (no bias) and silu_mul
     * (elementwise.cu) bit for bit. {@link #swiGluApplies} must hold; xc in the compute dtype.
     */
    static void swiGlu(CudaContext ctx, CudaQuant4bit gate, CudaQuant4bit up, Tensor xc, int rows, Tensor y) {
        if (!swiGluApplies(gate, up, rows) || xc.dtype() != gate.computeDType()) {
            throw new IllegalArgumentException("the joint gate / up GEMV does not take " + gate + " and " + up + " with "
                    + rows + " rows of " + xc.dtype() + " x");
        }
        int persistent = persistentSingle(ctx, gate, gate.outFeatures() / 8, true, rows);
        String kernel = "q4v2code_swiglu_bf16" + Nf4GemvKernels.codeRowsSuffix(rows) + "_tiles";
        KernelArgs args = Quant4bitKernels.layoutWeightArgs(gate);
        Quant4bitKernels.addLayoutWeightArgs(args, up).ptr(CudaContext.ptr(gate.code16()))
                .ptr(CudaContext.ptr(xc)).i32(rows).i32(gate.outFeatures()).i32(gate.inFeatures())
                .ptr(CudaContext.ptr(y)).i32(Quant4bitKernels.dtypeCode(y.dtype(), "output"));
        if (persistent > 0) {
            launchPersistent(ctx, kernel, persistent, true, rows, gate.inFeatures(), args);
        } else {
            long fn = ctx.function(Nf4GemvKernels.MODULE, kernel);
            ctx.allowSharedMemory(fn, Nf4GemvKernels.WIDE_TABLE_BYTES);
            ctx.launch(fn, Dim3.of(gate.outFeatures() / 8), Dim3.of(Nf4GemvKernels.THREADS), Nf4GemvKernels.WIDE_TABLE_BYTES, args);
        }
    }

    /**
     * Launches the persistent code kernel (its name without the form's suffix) for grid tile walkers (persistentGrid) in
     * the form for rows of x and the weights' in_features ({@link #fitted}); an SM-wide form takes
     * {@link PersistentForm#groups} walkers a block.
     */
    static void launchPersistent(CudaContext ctx, String kernel, int grid, boolean joint, int rows, int inFeatures,
                                 KernelArgs args) {
        PersistentForm form = fitted(persistentForm(rows, inFeatures), grid, joint,
                ctx.properties().maxSharedMemoryPerBlockOptin(), inFeatures);
        long fn = ctx.function(Nf4GemvKernels.MODULE, kernel + form.suffix());
        ctx.allowSharedMemory(fn, form.sharedBytes());
        ctx.launch(fn, Dim3.of(form.blocks(grid, joint)), Dim3.of(form.threads()), form.sharedBytes(), args);
    }

    /**
     * The form a launch of grid walkers takes: the chosen one, or the three-block form (the same values) instead of an
     * SM-wide one where the grid has too few walkers for one of its blocks or the GPU offers a block less shared memory
     * than its table on a 64 KiB boundary needs (sharedPerBlockOptin: the device's opt-in limit; GPUs below ~127 KiB);
     * two blocks where the three-block form could not stage x of inFeatures (the grid, sized for three blocks a SM, then
     * runs in more than one wave: the same values).
     */
    static PersistentForm fitted(PersistentForm form, int grid, boolean joint, int sharedPerBlockOptin, int inFeatures) {
        if (form.groups() > 1 && (form.blocks(grid, joint) == 0 || form.sharedBytes() > sharedPerBlockOptin)) {
            return xStaged(inFeatures) ? THREE_BLOCKS : TWO_BLOCKS;
        }
        return form;
    }

    /** Whether one row of x of inFeatures fits where the three-block kernels stage it ({@link #X_STAGE_BYTES}). */
    static boolean xStaged(int inFeatures) {
        return 2L * inFeatures <= X_STAGE_BYTES;
    }

    /**
     * System property: "false" launches the code decode on tiles one block per tile (the grid of the row layout)
     * instead of the persistent grid ({@link #persistentGrid}); A/B timing, same values.
     */
    static final String PERSISTENT_PROPERTY = "qlora4j.nf4.persistent";
    // native/nf4_gemv.cu: V2_CODE_DEPTH (the ring)
    static final int CODE_DEPTH = 2;
    /**
     * System property: the persistent code decode's form for one row of x (batch-1 decode). "auto" (the default): "3"
     * where it stages x (in_features up to 16,384), else "s3". "3": 8 warps, three blocks per SM, the "_p3" kernels
     * compiled for 80 registers, x staged in their table's spare halves once per block (bench/RESULTS.md session 27: the
     * 7B decode 1-2% faster than "3" reading x from global memory and 3% faster than "s3", with or without double
     * quantization); larger in_features take "2". "s3": one block of three 8-warp groups per SM sharing one decode table
     * on a 64 KiB boundary, the "_s3" kernels: one instruction fewer per packed byte (native/nf4_gemv_team.cuh; x from
     * global memory, any in_features). "2": 8 warps, two blocks, the "_p" kernels (up to 128 registers). 2..16 rows always
     * take "2" ("3" measured 0-7% slower at four rows). All give the same values (the same warps, chunks and order per
     * tile).
     */
    static final String PERSISTENT_FORM_PROPERTY = "qlora4j.nf4.persistentForm";
    /**
     * The most bytes of x the three-block kernels ("3") stage in their decode table's spare halves
     * (native/nf4_gemv_code.cuh: X_STAGE_BYTES): in_features up to 16,384 at one row. Larger x takes "s3" ("auto") or "2",
     * whose kernels read x from global memory.
     */
    static final int X_STAGE_BYTES = 256 * 128;
    /** Dynamic shared memory of the SM-wide kernels (native/nf4_gemv_team.cuh: SM_TEAM_DYNAMIC_BYTES). */
    static final int TEAM_SHARED_BYTES = 2 * 65536 - 1024;

    /**
     * A persistent kernel form: tile walkers (8-warp blocks or groups) per SM, the kernel name's suffix, and walkers a
     * block (1, or the groups of an SM-wide block).
     */
    record PersistentForm(int blocksPerSm, String suffix, int groups) {
        static final int WARPS = Nf4GemvKernels.THREADS / 32;

        int threads() { return groups * Nf4GemvKernels.THREADS; }

        int sharedBytes() { return groups == 1 ? Nf4GemvKernels.WIDE_TABLE_BYTES : TEAM_SHARED_BYTES; }

        /**
         * The blocks of a launch for grid walkers: grid, or for groups per block as many whole blocks as fit in grid (the
         * kernels' walkers must not outnumber the tiles), an even number of walkers for the joint decode; 0 if none fits.
         */
        int blocks(int grid, boolean joint) {
            if (groups == 1) return grid;
            int b = grid / groups;
            while (b > 0 && joint && b * groups % 2 != 0) b--;
            return b;
        }
    }

    static final PersistentForm TWO_BLOCKS = new PersistentForm(2, "_p", 1);
    static final PersistentForm THREE_BLOCKS = new PersistentForm(3, "_p3", 1);
    static final PersistentForm SM_WIDE = new PersistentForm(3, "_s3", 3);

    /**
     * The persistent form of a launch for this many rows of x and weights of inFeatures (native/nf4_gemv.cu: the kernels'
     * launch bounds; the three-block form stages x: {@link #xStaged}).
     */
    static PersistentForm persistentForm(int rows, int inFeatures) {
        String v = System.getProperty(PERSISTENT_FORM_PROPERTY, "auto").trim();
        PersistentForm one = switch (v) {
            case "auto" -> xStaged(inFeatures) ? THREE_BLOCKS : SM_WIDE;
            case "2" -> TWO_BLOCKS;
            case "3" -> THREE_BLOCKS;
            case "s3" -> SM_WIDE;
            default -> throw new IllegalArgumentException("-D" + PERSISTENT_FORM_PROPERTY + "=" + v + ": use auto, 3, s3 or 2");
        };
        return rows == 1 && (one != THREE_BLOCKS || xStaged(inFeatures)) ? one : TWO_BLOCKS;
    }

    /**
     * The grid of a persistent code-decode launch (nf4_gemv_code.cuh, PERSIST) over tiles blocks' worth of work (16-row
     * tiles; the joint decode's 8-row pairs): min(tiles, the form's blocks per SM), even for the joint decode (its blocks step
     * over whole 16-row tiles); or 0 when the persistent kernels do not apply: the property is off, the compute dtype
     * is not BF16 (their one form), or the warps would not own the same number (at least the ring's depth) of every
     * tile's chunks (nf4v2::persistent_applies). A single weight takes them only when the grid is below its tiles
     * ({@link #persistentSingle}); the grouped launch always (one launch instead of three).
     */
    static int persistentGrid(CudaContext ctx, CudaQuant4bit w, long tiles, boolean joint, int rows) {
        return persistentGrid(plannedSms(ctx), w.computeDType(), w.inFeatures(), tiles, joint, rows);
    }

    // 0, or the SMs persistentGrid plans for instead of the GPU's (tests: a small grid makes every block walk many tiles)
    private static volatile int gridSmsForTests;

    private static int plannedSms(CudaContext ctx) {
        return gridSmsForTests > 0 ? gridSmsForTests : ctx.properties().multiprocessorCount();
    }

    /** Plans the persistent grids of this JVM for that many SMs (0: the GPU's); tests only, same values either way. */
    static void setGridSmsForTests(int sms) { gridSmsForTests = sms; }

    /** {@link #persistentGrid} on a GPU of that many SMs, for a weight of that compute dtype and in_features. */
    static int persistentGrid(int multiprocessors, DType compute, int inFeatures, long tiles, boolean joint, int rows) {
        int chunks = inFeatures / 128;
        if (!Switches.on(PERSISTENT_PROPERTY, true) || compute != DType.BF16 || inFeatures % 128 != 0
                || chunks % PersistentForm.WARPS != 0 || chunks < PersistentForm.WARPS * CODE_DEPTH || tiles < 1) {
            return 0;
        }
        long slots = (long) persistentForm(rows, inFeatures).blocksPerSm() * multiprocessors;
        return (int) Math.min(tiles, joint ? slots & ~1L : slots);
    }

    /** The persistent grid of one weight's launch, or 0 where one block per tile is as good (the tiles fit one wave). */
    static int persistentSingle(CudaContext ctx, CudaQuant4bit w, long tiles, boolean joint, int rows) {
        return persistentSingle(plannedSms(ctx), w.computeDType(), w.inFeatures(), tiles, joint, rows);
    }

    static int persistentSingle(int multiprocessors, DType compute, int inFeatures, long tiles, boolean joint, int rows) {
        int grid = persistentGrid(multiprocessors, compute, inFeatures, tiles, joint, rows);
        return grid < tiles ? grid : 0;
    }

    /**
     * Whether the grouped persistent code decode (native/nf4_gemv.cu, q4v2gcode_gemv_bf16_*_tiles_p) takes these weights
     * for rows of x: 1..3 tiled weights with BF16 compute, one in_features (where the persistent kernels apply:
     * persistentGrid), quantization type, blocksize and nesting (nested blocksize and code table), the code decode
     * applying, and 1..16 rows.
     */
    static boolean groupTilesApplies(CudaContext ctx, List<CudaQuant4bit> ws, int rows) {
        if (ws.isEmpty() || ws.size() > Nf4GemvKernels.GROUP_MAX_SEGMENTS || rows < 1 || rows > Nf4GemvKernels.CODE_MAX_ROWS) return false;
        CudaQuant4bit first = ws.get(0);
        long tiles = 0;
        for (CudaQuant4bit w : ws) {
            if (w.layout() != Q4Layout.TILES || w.computeDType() != DType.BF16 || !Nf4GemvKernels.codeApplies(w)
                    || w.inFeatures() != first.inFeatures() || w.quantType() != first.quantType()
                    || w.blocksize() != first.blocksize() || w.nested() != first.nested()
                    || w.nestedBlocksize() != first.nestedBlocksize()
                    || (w.nested() && !java.util.Arrays.equals(w.nestedCodeHost(), first.nestedCodeHost()))) {
                return false;
            }
            tiles += w.outFeatures() / 16;
        }
        return persistentGrid(ctx, first, tiles, false, rows) > 0;
    }

    /**
     * ys.get(s) [rows, out_s] = xc ws.get(s)^T (+ biases.get(s)) for every weight in one persistent launch over all their
     * tiles: bit for bit the CODE decode of each weight ({@link Nf4GemvKernels#gemv}). {@link #groupTilesApplies} must hold; every y
     * in one dtype.
     */
    static void gemvGroupTiles(CudaContext ctx, List<CudaQuant4bit> ws, Tensor xc, int rows, List<Tensor> biases,
                               List<Tensor> ys) {
        if (!groupTilesApplies(ctx, ws, rows) || biases.size() != ws.size() || ys.size() != ws.size()
                || xc.dtype() != DType.BF16) {
            throw new IllegalArgumentException("the grouped persistent code GEMV does not take " + ws + " with " + rows
                    + " rows of " + xc.dtype() + " x");
        }
        DType yType = ys.get(0).dtype();
        KernelArgs args = Nf4GemvKernels.segmentArgs(ws, biases, ys, true);
        long tiles = 0;
        for (CudaQuant4bit w : ws) tiles += w.outFeatures() / 16;
        args.ptr(CudaContext.ptr(xc)).i32(rows).i32(ws.get(0).inFeatures()).i32(Quant4bitKernels.dtypeCode(yType, "output"));
        launchPersistent(ctx, "q4v2gcode_gemv_bf16" + Nf4GemvKernels.codeRowsSuffix(rows) + "_tiles",
                persistentGrid(ctx, ws.get(0), tiles, false, rows), false, rows, ws.get(0).inFeatures(), args);
        Nf4GemvKernels.GROUP_LAUNCHES.incrementAndGet();
    }
}
