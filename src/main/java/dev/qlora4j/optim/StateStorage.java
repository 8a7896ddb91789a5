package dev.qlora4j.optim;

/**
 * Where optimizer state lives (bitsandbytes' is_paged).
 *
 * <ul>
 *   <li>{@link #DEVICE}: next to the parameters (GPU memory on the CUDA backend).</li>
 *   <li>{@link #PAGED}: host-resident memory the GPU pages in on demand (bitsandbytes' paged
 *       optimizers use CUDA unified memory so that state is evicted to the host under memory
 *       pressure instead of failing). The CUDA optimizer reads this flag to allocate the state
 *       there; the math is unchanged.</li>
 * </ul>
 *
 * On the CPU backend both are the same thing: state is ordinary host memory.
 */
public enum StateStorage { DEVICE, PAGED }
