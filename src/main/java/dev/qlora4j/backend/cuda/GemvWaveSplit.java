package dev.qlora4j.backend.cuda;

import java.util.ArrayList;
import java.util.List;

/**
 * A one-row (decode) v2 GEMV cut into launches of at most one wave of blocks each (-Dqlora4j.nf4.waveLaunches=true).
 *
 * <p>Why: under programmatic dependent launch (native/pdl.cuh) a launch whose blocks are all resident at once issues
 * all of its first weight loads before it waits for the kernel before it, while a launch of several waves issues only
 * its first wave's: three 256-block q/k/v launches measured faster than one 768-block grouped launch. Cutting the
 * 688-block gate/up launches of a Llama-7B layer into one-wave pieces asks whether that holds for one weight too.
 * The pieces run the same blocks on the same data: the output is the same bit for bit.
 */
final class GemvWaveSplit {
    static final String PROPERTY = "qlora4j.nf4.waveLaunches";
    /** Resident v2 blocks per SM (8 warps of up to 128 registers: nf4_gemv.cu's launch bounds). */
    static final int BLOCKS_PER_SM = 2;

    /** Output rows [row0, row0 + rows) of one launch. */
    record Piece(int row0, int rows) {}

    private GemvWaveSplit() {}

    static boolean enabled() {
        return Boolean.parseBoolean(System.getProperty(PROPERTY, "false"));
    }

    /**
     * Pieces of one wave's rows each, in order; a single piece when the weight fits one wave or when a cut would not
     * fall on whole absmax (and nested absmax) blocks.
     */
    static List<Piece> pieces(CudaQuant4bit w, int multiprocessors) {
        return pieces(w.outFeatures(), w.inFeatures(), w.blocksize(), w.nested() ? w.nestedBlocksize() : 0, multiprocessors);
    }

    /** The same for a weight [out, in] with absmax blocks of blocksize values and nestedBlocksize (0: not nested). */
    static List<Piece> pieces(int out, int in, int blocksize, int nestedBlocksize, int multiprocessors) {
        int wave = Nf4GemvKernels.ROWS_PER_BLOCK * BLOCKS_PER_SM * multiprocessors;
        if (out <= wave || !cutsAligned(wave, in, blocksize, nestedBlocksize)) return List.of(new Piece(0, out));
        List<Piece> pieces = new ArrayList<>();
        for (int r = 0; r < out; r += wave) pieces.add(new Piece(r, Math.min(wave, out - r)));
        return pieces;
    }

    /** Whether a cut every `rows` rows starts whole absmax blocks and, when nested, whole nested-absmax groups. */
    static boolean cutsAligned(int rows, int in, int blocksize, int nestedBlocksize) {
        long values = (long) rows * in;
        if (values % blocksize != 0) return false;
        return nestedBlocksize == 0 || (values / blocksize) % nestedBlocksize == 0;
    }
}
