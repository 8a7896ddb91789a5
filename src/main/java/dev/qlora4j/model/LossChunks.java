package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.tensor.Tensor;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The chunked cross-entropy's device inputs and outputs for one step: per chunk of at most chunkRows token rows,
 * the row indices (I32 [rows]) and the targets (I32 [rows]), uploaded before the forward is queued, and the chunk's
 * token losses (F32 [rows]), read back only when the step asks for the sum. An upload from host memory and a read
 * both wait for the GPU: in the middle of a step they would drain the queue and leave the GPU idle while the host
 * queues the next ops.
 */
final class LossChunks implements AutoCloseable {
    private final Backend backend;
    private final List<Tensor> rows = new ArrayList<>();
    private final List<Tensor> targets = new ArrayList<>();
    private final List<Tensor> losses = new ArrayList<>();

    private LossChunks(Backend backend) { this.backend = backend; }

    /** Uploads the row indices and targets of every chunk of targets.length rows to backend. */
    static LossChunks upload(Backend backend, int[] targets, int chunkRows) {
        LossChunks c = new LossChunks(backend);
        try {
            for (int from = 0; from < targets.length; from += chunkRows) {
                int n = Math.min(chunkRows, targets.length - from);
                int[] idx = new int[n];
                for (int i = 0; i < n; i++) idx[i] = from + i;
                c.rows.add(backend.upload(Tensor.ofInts(idx, n)));
                c.targets.add(backend.upload(Tensor.ofInts(Arrays.copyOfRange(targets, from, from + n), n)));
            }
            return c;
        } catch (RuntimeException e) {
            c.close();
            throw e;
        }
    }

    int count() { return rows.size(); }

    Tensor rows(int chunk) { return rows.get(chunk); }

    Tensor targets(int chunk) { return targets.get(chunk); }

    /** Keeps a chunk's token losses (owned from now on) for {@link #sum}. */
    void addLosses(Tensor chunkLosses) { losses.add(chunkLosses); }

    /** The sum of every kept token loss, chunk by chunk in order (in double); reads them from the GPU now. */
    double sum() {
        double s = 0;
        for (Tensor l : losses) {
            for (float v : backend.toHost(l).toFloatArray()) s += v;
        }
        return s;
    }

    @Override
    public void close() {
        for (List<Tensor> list : List.of(rows, targets, losses)) {
            for (Tensor t : list) t.close();
            list.clear();
        }
    }
}
