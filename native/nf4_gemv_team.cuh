// nf4_gemv_team.cuh — who shares a tile in the persistent code GEMVs (nf4_gemv_code.cuh): a block of W warps (G = 1, the
// "_p" / "_p3" kernels), or one of G groups of W warps in a block that fills an SM (G > 1, the "_s3" kernels).
//
// Why SM-wide blocks: the code decode reads a 64 KiB "wide" table (byte v for lane l at v * 256 + 4 l). With one table
// per block of 8 warps, a byte's shared address is a prmt (byte into bits 8..15, 4 l into bits 0..7) PLUS an add of the
// table's base (32 IMAD.IADD a chunk, ~18% of the decode's instructions: ncu / SASS, session 26). A block that fills the
// SM holds one table for all its warps and places it on a 64 KiB boundary of its shared window, so the prmt forms the
// whole address (bits 16..31 come from the base) and the add goes away; the G groups walk the tiles exactly as G blocks
// of W warps would (same warps, chunks, order and reduction per tile: bit for bit the G = 1 kernels' values).
//
// Shared memory of a G > 1 block: SM_TEAM_DYNAMIC_BYTES of dynamic memory, whose start (after the driver's 1 KiB
// reserve on sm_90 and the kernel's static memory: one set of factors and nested codes for the block) up to 64 KiB holds
// the G groups' reduction buffers and [64 KiB, 128 KiB) the table; TeamLayout traps if the buffers do not fit below it
// (static shared memory grown past ~48 KiB would move the dynamic area up).
#pragma once

namespace nf4v2 {

// Dynamic shared memory of a G > 1 launch (Nf4TileGemvKernels mirrors it): 128 KiB of window minus the 1 KiB reserve.
constexpr int SM_TEAM_DYNAMIC_BYTES = 2 * 65536 - 1024;

// The threads that share a tile: the block (G = 1) or group threadIdx.x / (W * 32) of G.
template <int G, int W>
struct Team {
    static constexpr int THREADS = W * 32;
    __device__ __forceinline__ static int group() { return G == 1 ? 0 : (int)threadIdx.x / THREADS; }
    // the thread's index within its team
    __device__ __forceinline__ static int tid() { return G == 1 ? (int)threadIdx.x : (int)threadIdx.x % THREADS; }
    __device__ __forceinline__ static int warp() {
        return G == 1 ? (int)(threadIdx.x >> 5) : (int)((threadIdx.x % THREADS) >> 5);
    }
    // a barrier of the team's threads (named barrier 1 + group for G > 1; barrier 0 stays the block's)
    __device__ __forceinline__ static void sync() {
        if constexpr (G == 1) {
            __syncthreads();
        } else {
            asm volatile("bar.sync %0, %1;" ::"r"(1 + group()), "n"(THREADS) : "memory");
        }
    }
};

// The 32-bit shared-window address of a shared pointer.
__device__ __forceinline__ uint32_t shared_address(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// A G > 1 block's wide table (the first 64 KiB boundary of the dynamic area) and group g's Smem S (below the table).
// With SM_TEAM_DYNAMIC_BYTES of dynamic shared memory starting below 64 KiB, the table always fits; the one check (a
// trap) is that the G groups' Smem fit below it, i.e. that static shared memory has not pushed the dynamic area up.
template <typename S, int G>
struct TeamLayout {
    uint8_t* table;
    S* smem;
    __device__ __forceinline__ TeamLayout() {
        const uint32_t start = shared_address(wide_table) & 0xFFFFFFu;  // the CTA's window offset
        uint32_t dynamic_bytes;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic_bytes));
        if (start + G * (uint32_t)sizeof(S) > 0x10000u || dynamic_bytes < (uint32_t)SM_TEAM_DYNAMIC_BYTES) __trap();
        table = wide_table + (0x10000u - start);
        smem = reinterpret_cast<S*>(wide_table);
    }
};

// The key of a table on a 64 KiB boundary for lane: the table's address bits 16..31 and the lane's 4 l in bits 0..7.
__device__ __forceinline__ uint32_t team_table_key(const uint8_t* table, int lane) {
    return (shared_address(table) & 0xFFFF0000u) | (uint32_t)lane * 4u;
}

// decode_word_code with the table on a 64 KiB boundary: byte b's address is ONE prmt of w with the key (bits 0..7 and
// 16..31 from the key, 8..15 the byte); the same T pairs.
__device__ __forceinline__ void decode_word_code_at(uint32_t w, uint32_t key, uint32_t* r) {
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const uint32_t a = prmt(w, key, 0x7604u | (uint32_t)(b << 4));
        asm volatile("ld.shared.b32 %0, [%1];" : "=r"(r[b]) : "r"(a));
    }
}

}  // namespace nf4v2
