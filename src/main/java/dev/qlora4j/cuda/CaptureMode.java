package dev.qlora4j.cuda;

/**
 * CUstreamCaptureMode: which CUDA calls from other threads (GLOBAL) or this thread (THREAD_LOCAL) are
 * refused while a stream is being captured into a graph; RELAXED refuses none.
 */
public enum CaptureMode {
    GLOBAL(0), THREAD_LOCAL(1), RELAXED(2);

    private final int value;

    CaptureMode(int value) { this.value = value; }

    /** The cuda.h enum value. */
    public int value() { return value; }
}
