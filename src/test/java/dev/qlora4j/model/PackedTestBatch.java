package dev.qlora4j.model;

import java.util.Random;

/**
 * A small packed training batch for tests: rows of t tokens; row 0 packs two examples (the second starts at split),
 * with the targets ignored (-100) at each example's end. Returns {ids, positions, segments, targets}, each [rows * t].
 */
public final class PackedTestBatch {
    private PackedTestBatch() {}

    public static int[][] of(int vocab, int rows, int t, int split, long seed) {
        int n = rows * t;
        int[] ids = new int[n], pos = new int[n], segs = new int[n], targets = new int[n];
        Random r = new Random(seed);
        for (int i = 0; i < n; i++) {
            int row = i / t, j = i % t;
            int seg = row == 0 && j >= split ? 1 : 0;
            ids[i] = r.nextInt(vocab);
            segs[i] = seg;
            pos[i] = seg == 1 ? j - split : j;
            targets[i] = j == t - 1 || (row == 0 && j == split - 1) ? -100 : r.nextInt(vocab);
        }
        return new int[][] {ids, pos, segs, targets};
    }
}
