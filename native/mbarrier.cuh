// mbarrier.cuh — shared-memory barriers with phases (mbarrier, sm_90), addressed by their 32-bit shared-window
// address: a producer signals "this stage landed" and consumers "this stage is free again" without a block-wide
// __syncthreads. Only code compiled for sm_90 or newer may call these.
//
// A barrier counts arrivals; when `count` threads have arrived its current phase completes and the next begins.
// Waiters name the phase by parity: the n-th completion (n = 0, 1, ...) of a barrier has parity n & 1.
#pragma once
#include <stdint.h>

namespace mbar {

// Once, by one thread, before any other thread touches the barrier (then fence_init and a block barrier).
__device__ __forceinline__ void init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the other threads (and the async proxy) of the block.
__device__ __forceinline__ void fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

// One arrival (release: this thread's earlier writes are visible to whoever waits for the phase it completes).
__device__ __forceinline__ void arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// One arrival that also raises the phase's expected transaction bytes (the bulk copies that complete_tx on it).
__device__ __forceinline__ void arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// An arrival triggered when every cp.async this thread has issued so far has landed (the barrier's pending count is
// raised by one now, so the arrival is on top of the count the barrier was initialised with).
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Waits (acquire) until the phase of the given parity has completed.
__device__ __forceinline__ void wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "MBAR_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra MBAR_WAIT;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

}  // namespace mbar
