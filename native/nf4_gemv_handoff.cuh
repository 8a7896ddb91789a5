// nf4_gemv_handoff.cuh — the end of a tile in the persistent code GEMVs (nf4_gemv_code.cuh, PERSIST) without stopping
// the team that shares the tile.
//
// A tile's W warps each hold partial sums of its outputs (their chunks of K); the outputs are those partials added in
// warp order. Before, every tile ended with a barrier of the team, W warps' fragments in shared memory, the outputs
// summed by the first 64 threads, and a second barrier before the buffer could be written again: at each tile end the
// whole team stopped for two barriers and the summing warps' chain of W shared loads and adds (ncu: 0.5-0.8 of the ~9
// cycles between a warp's instructions were barrier stalls, session 23).
//
// Now (sm_90: mbarriers), per tile i of the team's walk: the warps write their fragments into buffer i & 1 and ARRIVE on
// its "full" barrier (no wait); warp i % W adds tile i's outputs (all of them, its lanes over the NT * 64 or NT * 32
// outputs) but only after it has written its fragment of tile i + 1, so the summing is off the chain of fragments the
// next tile's adder waits for, and each warp sums one tile in W; it then arrives on the buffer's "empty" barrier, which
// the warps wait for before writing tile i + 2's fragments into the same buffer. The additions are those of the
// block-wide form (warp order, one thread per output), so the outputs are the same bits.
//
// Phases: "full" of buffer b completes once per use (tile j's is completion j >> 1), "empty" once per summing of a
// tile in it. A warp waits for full(j) only as tile j's adder, after all warps' arrivals for tile j; it waits for
// empty before writing tile i >= 2 (completion (i >> 1) - 1). Neither barrier can run two phases ahead of a waiter
// (tile j + 2's arrivals need tile j's empty completion, which needs tile j's adder, i.e. the waiter of full(j)), so
// the parity waits are unambiguous.
//
// Where (handoff_applies): the "_p" m4 kernels (two blocks a SM, up to 128 registers: 2..4 rows of x; one row only
// with -Dqlora4j.nf4.persistentForm=2, or where neither "_p3" nor "_s3" takes it) on sm_90: their GEMVs 2.5-4% faster
// at 2 and 4 rows (bench/RESULTS.md session 29). The 80-register "_p3" / "_s3" kernels keep the block-wide end (with
// the handoff their GEMVs were 7% slower: spills and rematerialised addresses at the register cap), as do the m8 / m16
// kernels and every kernel in the portable PTX.
#pragma once
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include "mbarrier.cuh"
#define NF4_HANDOFF_MBAR 1
#else
#define NF4_HANDOFF_MBAR 0
#endif

namespace nf4v2 {

// A warp's run[nt] = (row g, row g + 8) of x row 4 nt + t into a reduction buffer red2 [W][NT][32] of pairs.
template <int NT>
__device__ __forceinline__ void put_fragment(float2* red2, const float (&run)[NT][2], int warp, int lane) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) red2[(warp * NT + nt) * 32 + lane] = make_float2(run[nt][0], run[nt][1]);
}

// Whether a persistent kernel ends its tiles with TileHandoff: sm_90, the "_p" kernels (G = 1 without staged x) for up
// to 4 rows of x (NT = 1). With 8 and 16 rows the one summing warp has 128 / 256 outputs (4 / 8 a lane) and the m16
// kernels spill more: measured 0-1.5% (NT = 2) and 3-9% (NT = 4) slower than the block-wide end.
__host__ __device__ constexpr bool handoff_applies(int G, bool XS, int NT) {
    return NF4_HANDOFF_MBAR && G == 1 && !XS && NT == 1;
}

#if NF4_HANDOFF_MBAR
// OUTS: a tile's outputs (sum's e = 0 .. OUTS - 1); the two buffers of [W][NT][32] pairs are Smem::red's W NT 32 float4.
template <int W, int NT, int OUTS>
struct TileHandoff {
    static constexpr int PAIRS = W * NT * 32;
    float2* const red2;
    int i = 0;           // the block's tiles handed off so far
    int pending = -1;    // the tile (its index i) this warp sums next, or -1

    // The block's four barriers: full 0, full 1, empty 0, empty 1.
    __device__ __forceinline__ static uint32_t bar(int k) {
        __shared__ __align__(8) uint64_t handoff_bars[4];
        return shared_address(handoff_bars + k);
    }

    // Once, before the block's first barrier (the tables' __syncthreads, which publishes the init).
    __device__ __forceinline__ static void init() {
        if (threadIdx.x == 0) {
            mbar::init(bar(0), W * 32);
            mbar::init(bar(1), W * 32);
            mbar::init(bar(2), 32);
            mbar::init(bar(3), 32);
            mbar::fence_init();
        }
    }

    __device__ __forceinline__ explicit TileHandoff(float4* red) : red2(reinterpret_cast<float2*>(red)) {}

    // The end of the block's tile i (0, 1, ... in the order of its walk): sum(buf, e, i) stores output e of tile i
    // from its fragments buf (read as [W][NT][32] pairs).
    template <typename Sum>
    __device__ __forceinline__ void hand_off(const float (&run)[NT][2], Sum&& sum) {
        const int warp = (int)(threadIdx.x >> 5), p = i & 1;
        if (i >= 2) mbar::wait(bar(2 + p), ((i >> 1) - 1) & 1);  // tile i - 2 summed: its buffer is free
        put_fragment<NT>(red2 + p * PAIRS, run, warp, threadIdx.x & 31);
        mbar::arrive(bar(p));
        if (pending >= 0) sum_pending(sum);  // tile i - 1, summed after this warp's fragment of tile i
        if (warp == i % W) pending = i;
        i++;
    }

    // After the block's last tile: this warp's pending summing, if any.
    template <typename Sum>
    __device__ __forceinline__ void finish(Sum&& sum) {
        if (pending >= 0) sum_pending(sum);
    }

    template <typename Sum>
    __device__ __forceinline__ void sum_pending(Sum&& sum) {
        const int q = pending & 1;
        mbar::wait(bar(q), (pending >> 1) & 1);
        const float2* buf = red2 + q * PAIRS;
        for (int e = threadIdx.x & 31; e < OUTS; e += 32) sum(buf, e, pending);
        mbar::arrive(bar(2 + q));
        pending = -1;
    }
};
#else
// Never used where handoff_applies is false; a stand-in so that the kernels compile for every architecture.
template <int W, int NT, int OUTS>
struct TileHandoff {
    __device__ __forceinline__ static void init() {}
    __device__ __forceinline__ explicit TileHandoff(float4*) {}
    template <typename Sum>
    __device__ __forceinline__ void hand_off(const float (&)[NT][2], Sum&&) {}
    template <typename Sum>
    __device__ __forceinline__ void finish(Sum&&) {}
};
#endif

}  // namespace nf4v2
