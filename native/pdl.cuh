// pdl.cuh — programmatic dependent launch (PDL, Hopper and newer): lets the next kernel in a stream start while the
// current one is still running, so its launch latency and its input-independent prologue (for a GEMV: the first
// weight loads) overlap the tail of the kernel before it.
//
// Contract of every kernel in a module that calls pdl_enter() / pdl_wait() (the modules listed in SM90A in
// native/Makefile; their kernels may be launched with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION):
//   - before pdl_wait() a kernel reads only data no earlier kernel of the stream writes (weights, tables, constants)
//     and writes no global memory at all (an earlier kernel may still be reading it);
//   - pdl_wait() returns once the grids it depends on have completed and their memory is visible (it returns at once
//     when the kernel was launched without the attribute);
//   - pdl_launch_dependents() (after the wait) lets the NEXT kernel of the stream be scheduled now: it does not make
//     any of this kernel's results visible early; the next kernel's own pdl_wait() still waits for all of them.
// Both compile to nothing below sm_90 (the portable compute_80 PTX), where the attribute is never set.
#pragma once

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The first statement of a kernel with no input-independent prologue: wait for the kernels it depends on, then let
// the next one launch (one level of look-ahead: the next kernel's blocks are scheduled while this one runs).
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}
