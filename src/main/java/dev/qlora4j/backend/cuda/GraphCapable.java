package dev.qlora4j.backend.cuda;

/**
 * A backend that can record a decode step (T = 1) once and replay it, so that a step costs one graph launch
 * instead of hundreds of kernel launches (the launch overhead dominates small-batch decoding), and pick the tokens
 * from the logits on the device.
 * {@link dev.qlora4j.infer.Generator} uses it when the backend offers it; no other code needs to know.
 *
 * <p>Backend-neutral on purpose (it depends only on tensors); it could move to dev.qlora4j.backend.
 */
public interface GraphCapable {
    /** Whether decode graphs are switched on for this backend (CudaBackend: on unless qlora4j.cuda.graphs=false). */
    boolean decodeGraphsEnabled();

    /**
     * A recorder/replayer of one decode step for batch rows: the body runs the model on the graph's static
     * input tensors and returns the logits [batch, vocab] on the device. The body must do the same work on
     * every call (same shapes, no host copies), read every per-step value from its inputs, and must not
     * depend on {@code start} beyond what the backend's ops read from it.
     */
    DecodeGraph newDecodeGraph(int batch, DecodeGraph.Body body);

    /**
     * A picker of batch rows' tokens on the device for decode steps that run without a graph, or null when the backend
     * picks none (CudaBackend: null with -Dqlora4j.cuda.devicePick=false).
     */
    default TokenPicker newTokenPicker(int batch) { return null; }
}
