package dev.qlora4j.backend.cuda;

import dev.qlora4j.tensor.DType;

/**
 * The order of a 4-bit weight's packed bytes on the GPU ({@link CudaQuant4bit#layout()}).
 *
 * <ul>
 *   <li>ROWS: bitsandbytes' order, value e = row * in + k in nibble e of the flattened weight (what checkpoints hold).</li>
 *   <li>TILES: the same 16-byte records (32 values of one row) regrouped as [out / 16 tiles][in / 128 chunks][2 row
 *       halves][32 lanes][16 bytes], lane 4 (row % 8) + (k % 128) / 32 (native/q4_common.cuh, q4_tile_word). The decode
 *       GEMV's warp then reads a chunk of 16 rows as 1 KiB of contiguous bytes instead of 16 pieces of 64 bytes:
 *       10-13% faster per GEMV on the H200 (native/NOTES-nf4-gemv.md, sessions 21-22). Dequantize, the code and pair
 *       GEMVs read it directly; downloads ({@link CudaQuant4bit#toHostState}) put the rows back.</li>
 * </ul>
 * The backend gives a weight the tile layout when {@link #tilesApply} holds, the system property {@value #PROPERTY} is
 * "tiles" (the default; "rows" keeps bitsandbytes' order) and the decode GEMV variant (qlora4j.nf4.gemv) is one with
 * tile kernels (v2code, the default, or v2).
 */
public enum Q4Layout {
    ROWS, TILES;

    /** System property choosing the layout of the weights the backend prepares: "tiles" (default) or "rows". */
    public static final String PROPERTY = "qlora4j.nf4.layout";

    /** Output rows of a tile and input values of a chunk. */
    static final int TILE_ROWS = 16;
    static final int CHUNK_K = 128;

    /**
     * Whether a weight [out, in] can have the tile layout: 16-bit compute, whole tiles and chunks (out % 16 == 0,
     * in % 128 == 0), the GEMV's aligned path (in a multiple of the power-of-two blocksize, a power-of-two nested
     * blocksize) and 32-bit word indices (out * in / 8 &lt; 2^31).
     */
    static boolean tilesApply(int out, int in, int blocksize, boolean nested, int nestedBlocksize, DType compute) {
        return compute != DType.F32 && out > 0 && out % TILE_ROWS == 0 && in > 0 && in % CHUNK_K == 0
                && Integer.bitCount(blocksize) == 1 && in % blocksize == 0
                && (!nested || Integer.bitCount(nestedBlocksize) == 1)
                && (long) out * in / 8 < (1L << 31);
    }

    /** The layout the system property asks for (read per call). */
    static Q4Layout requested() {
        String v = System.getProperty(PROPERTY, "tiles").trim();
        return switch (v) {
            case "tiles" -> TILES;
            case "rows" -> ROWS;
            default -> throw new IllegalArgumentException("system property " + PROPERTY + " must be tiles (the default) or"
                    + " rows, got '" + v + "'");
        };
    }

    /**
     * The 32-bit word of the tile layout holding values 8 kp .. 8 kp + 7 of row r (kp = the piece of the row), for a
     * weight with chunks = in / 128: the host twin of native/q4_common.cuh's q4_tile_word.
     */
    static long tileWord(int r, int kp, int chunks) {
        long record = (((long) (r >> 4) * chunks + (kp >> 4)) * 2 + ((r >> 3) & 1)) * 32 + 4L * (r & 7) + ((kp >> 2) & 3);
        return record * 4 + (kp & 3);
    }

    /** The packed bytes of a weight [out, in] in the row layout rearranged into the tile layout (host reference). */
    static byte[] toTiles(byte[] rows, int out, int in) {
        byte[] tiles = new byte[rows.length];
        int chunks = in / CHUNK_K, pieces = in / 8;
        for (int r = 0; r < out; r++) {
            for (int kp = 0; kp < pieces; kp++) {
                System.arraycopy(rows, (r * pieces + kp) * 4, tiles, (int) (tileWord(r, kp, chunks) * 4), 4);
            }
        }
        return tiles;
    }
}
