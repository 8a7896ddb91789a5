package dev.qlora4j.backend;

import dev.qlora4j.backend.cuda.CudaBackend;
import dev.qlora4j.backend.cuda.CudaContext;
import dev.qlora4j.cuda.CudaDriver;
import dev.qlora4j.tensor.Tensor;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The one op that moves a tensor between backends, so that model code running over several devices (a model
 * split across GPUs) stays backend-agnostic. Every pairing works: CPU to CPU (a host copy), CPU to CUDA (an
 * upload), CUDA to CPU (a download, which waits for the source stream), and CUDA to CUDA.
 *
 * <p>CUDA to CUDA is stream-ordered and never blocks the host:
 * <ol>
 *   <li>an event recorded on the source stream marks the point where the work producing {@code t} is queued;</li>
 *   <li>the destination tensor comes from the destination's allocator, so it is free in the destination stream's
 *       order; that stream waits for the source event, then copies (cuMemcpyDtoDAsync on one GPU, cuMemcpyPeerAsync
 *       between GPUs, direct over NVLink/PCIe where peer access could be enabled);</li>
 *   <li>an event recorded after the copy makes the source stream wait too, so the caller may close {@code t} at
 *       once: its block may be handed to later source work only after the copy has read it.</li>
 * </ol>
 * Two backends on the same GPU (two contexts objects over one primary context, as the tests use) take the same
 * path: they have separate streams that must be ordered just the same.
 */
public final class DeviceTransfer {
    private DeviceTransfer() {}

    /** GPU pairs (src * 65536 + dst) whose peer access was already tried. */
    private static final Set<Long> PEER_PAIRS = ConcurrentHashMap.newKeySet();

    /** t (a tensor of backend from) on backend to: t itself when the backends are the same, else a copy the caller owns. */
    public static Tensor to(Tensor t, Backend from, Backend to) {
        return from == to ? t : copy(t, from, to);
    }

    /**
     * A new tensor on backend to with t's dtype, shape and bytes; t belongs to backend from and stays the caller's.
     * The copy is ordered after every op queued on from so far and before every op queued on to from now on.
     */
    public static Tensor copy(Tensor t, Backend from, Backend to) {
        if (from instanceof CudaBackend src && to instanceof CudaBackend dst) return cudaToCuda(t, src.context(), dst.context());
        if (from.device().isCpu() && to.device().isCpu()) return t.toDType(t.dtype()); // a host copy
        if (to.device().isCpu()) {
            Tensor host = from.toHost(t);
            return host == t ? t.toDType(t.dtype()) : host;
        }
        if (from.device().isCpu()) {
            Tensor up = to.upload(t);
            return up == t ? t.toDType(t.dtype()) : up;
        }
        // Two accelerator backends of different kinds: through the host.
        Tensor host = from.toHost(t);
        try {
            return to.upload(host);
        } finally {
            if (host != t) host.close();
        }
    }

    private static Tensor cudaToCuda(Tensor t, CudaContext src, CudaContext dst) {
        if (!t.device().equals(src.device())) {
            throw new IllegalArgumentException("DeviceTransfer: " + t + " is not on " + src.device() + ", the source backend's GPU");
        }
        CudaDriver driver = dst.driver();
        boolean peer = src.ordinal() != dst.ordinal();
        if (peer) enablePeerAccess(src, dst);
        src.bind();
        driver.eventRecord(src.transferEvent(), src.stream());   // t is produced once the source stream passes here
        Tensor out = dst.empty(t.dtype(), t.shape());             // binds dst
        long bytes = t.byteSize();
        if (bytes > 0) {
            driver.streamWaitEvent(dst.stream(), src.transferEvent());
            if (peer) {
                driver.memcpyPeerAsync(CudaContext.ptr(out), dst.contextHandle(), CudaContext.ptr(t), src.contextHandle(), bytes,
                        dst.stream());
            } else {
                driver.memcpyDtoDAsync(CudaContext.ptr(out), CudaContext.ptr(t), bytes, dst.stream());
            }
            driver.eventRecord(dst.transferEvent(), dst.stream());
            src.bind();
            driver.streamWaitEvent(src.stream(), dst.transferEvent()); // t's block is reusable once the copy read it
            dst.bind(); // the caller works on the destination next
        }
        return out;
    }

    /** Lets each of the two GPUs read the other's memory directly when the hardware can (once per pair). */
    private static void enablePeerAccess(CudaContext a, CudaContext b) {
        long key = (long) a.ordinal() * 65536 + b.ordinal();
        if (!PEER_PAIRS.add(key)) return;
        CudaDriver d = a.driver();
        if (d.deviceCanAccessPeer(b.ordinal(), a.ordinal())) {
            b.bind();
            d.contextEnablePeerAccess(a.contextHandle());
        }
        if (d.deviceCanAccessPeer(a.ordinal(), b.ordinal())) {
            a.bind();
            d.contextEnablePeerAccess(b.contextHandle());
        }
        PEER_PAIRS.add((long) b.ordinal() * 65536 + a.ordinal());
    }
}
