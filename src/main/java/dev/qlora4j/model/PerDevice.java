package dev.qlora4j.model;

import dev.qlora4j.backend.Backend;
import dev.qlora4j.backend.DeviceTransfer;
import dev.qlora4j.tensor.Tensor;

import java.util.IdentityHashMap;
import java.util.Map;

/**
 * One input of a model step (ids, positions, pad starts, packing segments) as each device of a split model needs
 * it: the original on its home backend, a copy made on first use on any other backend, the copies closed with
 * this. On a single device {@link #on} returns the original and nothing is copied.
 */
final class PerDevice implements AutoCloseable {
    private final Tensor source;   // null: an absent optional input
    private final Backend home;
    private final Map<Backend, Tensor> copies = new IdentityHashMap<>();

    private PerDevice(Tensor source, Backend home) {
        this.source = source;
        this.home = home;
    }

    /** A tensor of backend home (null stays null on every device); the caller keeps owning it. */
    static PerDevice of(Tensor source, Backend home) {
        return new PerDevice(source, home);
    }

    /** The input on backend b (the original on its home backend); owned by this object. */
    Tensor on(Backend b) {
        if (source == null || b == home) return source;
        return copies.computeIfAbsent(b, k -> DeviceTransfer.copy(source, home, k));
    }

    @Override
    public void close() {
        for (Tensor t : copies.values()) t.close();
        copies.clear();
    }
}
