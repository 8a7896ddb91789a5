/**
 * Optimizers, learning-rate schedules and gradient clipping, mirroring torch.optim (AdamW, SGD),
 * bitsandbytes (AdamW8bit, paged variants) and transformers (get_scheduler, clip_grad_norm_ as
 * the Trainer uses it).
 *
 * <p>Layout, so that the CUDA backend can run the same optimizers on device memory:
 * <ul>
 *   <li>{@link dev.qlora4j.optim.Param} / {@link dev.qlora4j.optim.ParamGroup} hold tensors, not
 *       arrays; {@link dev.qlora4j.optim.Optimizer} is the contract both backends implement,
 *       including the state-dict names ("state.&lt;param&gt;.&lt;slot&gt;") that
 *       {@link dev.qlora4j.optim.OptimizerState} saves as safetensors;</li>
 *   <li>the math lives in per-element-range static kernels over float[]
 *       ({@link dev.qlora4j.optim.AdamWKernel}, {@link dev.qlora4j.optim.BnbAdamKernels},
 *       {@link dev.qlora4j.optim.SgdKernel}) with their per-step scalars computed once in a
 *       {@code Scalars} record: the CPU twins of the CUDA kernels, which take the same scalars
 *       and are tested against them;</li>
 *   <li>{@link dev.qlora4j.optim.StateStorage#PAGED} marks state the CUDA optimizer keeps in
 *       host-resident paged memory; on the host it changes nothing.</li>
 * </ul>
 */
package dev.qlora4j.optim;
