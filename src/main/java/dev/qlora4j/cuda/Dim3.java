package dev.qlora4j.cuda;

/** A launch dimension (grid in blocks, or block in threads); every component >= 1. */
public record Dim3(int x, int y, int z) {
    public Dim3 {
        if (x < 1 || y < 1 || z < 1) {
            throw new IllegalArgumentException("launch dimensions must be >= 1, got (" + x + ", " + y + ", " + z + ")");
        }
    }

    public static Dim3 of(int x) { return new Dim3(x, 1, 1); }

    public static Dim3 of(int x, int y) { return new Dim3(x, y, 1); }

    /** Blocks needed to cover n elements with blockSize threads each, as a 1-D grid (at least 1). */
    public static Dim3 cover(long n, int blockSize) {
        long blocks = Math.max(1, (n + blockSize - 1) / blockSize);
        if (blocks > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(n + " elements need " + blocks + " blocks of " + blockSize
                    + ": more than a 1-D grid holds; use a grid-stride kernel with a capped grid");
        }
        return of((int) blocks);
    }
}
