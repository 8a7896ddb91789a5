// attention.cu — causal grouped-query attention against the KV cache: cache write, flash prefill,
// split-K decode (flash-decoding) and its combine step.
//
// Tensors (T = float for F32 activations, __nv_bfloat16 for BF16; D = headDim, G = heads / kvHeads):
//   q   [B*T, H*D]   rope applied; row b*T + t, head h at column h*D
//   k,v [B*T, KVH*D] rope applied to k
//   kc,vc cache of one layer [B, KVH, cap, D]
//   out [B*T, H*D]
//   pad_start I32 [B]: slots before it are left padding of row b
//   start: first cache slot of the new tokens, passed by value, or read from start_ptr[0] when start_ptr is
//   not NULL (a decode step captured in a CUDA graph reads it from device memory, so replays can move on).
// Visibility (Backend.attention): the query of new token t of row b sits in slot s = start + t and sees
//   slots j with max(pad_start[b], window > 0 ? s - window + 1 : 0) <= j <= s.
// Math it mirrors (backend/cpu/AttentionKernel, HF eager attention): scores = (q . k_j) * scale in float32,
//   softmax in float32 with the max subtracted, out = sum_j p_j v_j; a query that sees no slot gives zeros.
//   Here the softmax is the online (flash) form: per key tile, m' = max(m, tile max), l' = l e^(m-m') +
//   sum e^(s-m'), acc' = acc e^(m-m') + sum e^(s-m') v, out = acc / l. Same function; float32 rounding
//   differs only in summation order (~1e-6 relative). No T x T matrix is ever stored.
//
// Kernels and launch shapes:
//   kv_write_<t>        1-D grid-stride over B*T*KVH*D, 256 threads.
//   attn_prefill_<t>_d<D>  grid (ceil(T / BQ), H, B); 128 threads = 4 warps; warp w owns R query rows
//                       (BQ = 4R: R = 8 for D <= 128, else 4). Key/value tiles of 32 slots are staged in
//                       shared memory as float32 (K rows padded to D+4 floats: lane j reads key j with
//                       16-byte loads without bank conflicts); lane j scores key j against the warp's R
//                       queries (q broadcast from shared memory), then each lane accumulates its D/32
//                       output dimensions (strided lane + 32c) over the 32 keys, p_j broadcast by shuffle.
//                       Dynamic shared memory: (BQ*D + 32*(D+4) + 32*D) * 4 bytes.
//   attn_decode_<t>_d<D>_g<GM>[_w8]  T = 1. grid (S, KVH * ceil(G / GM), B); 128 threads = 4 warps (_w8: 256 = 8
//                       warps, D <= 128: one split of up to 256 slots in one pass of its warps). One block serves
//                       GM query heads of one kv head (GM = 1, 2, 4, 8: the smallest power of two >= G, at
//                       most 8; K/V are read once for the whole group) over a
//                       chunk of the visible slots: chunk = ceil(len / S), split i covers
//                       [lo + i*chunk, min(lo + (i+1)*chunk, s+1)). Warps take 32-slot groups in turn;
//                       lane j reads key j straight from global memory (16-byte loads of its row) and
//                       scores it against the group's queries (broadcast from shared memory); lane l owns
//                       output dimensions [l*D/32, (l+1)*D/32) (coalesced value rows). The warps' states
//                       are merged in shared memory. S == 1: writes out; S > 1: writes the partial state
//                       (m, l, acc) to part_ml [B, H, S, 2] and part_acc [B, H, S, D]; then, when counters
//                       [B * gridDim.y] (zero between launches) is given, the block of each head group that
//                       arrives last merges the S states into out (no attn_combine launch), else attn_combine does.
//                       prefetch != 0 (sm_90): the block's cache rows are requested into L2 before the wait for
//                       the previous kernel (prefetch_decode_rows).
//                       S depends only on the cache capacity and the shapes (chosen on the host), so a
//                       graph replay and a direct call launch the same grid and round identically.
//   attn_combine_<t>_d<D>  grid (H, B), D threads (at least 32): out = sum_i e^(m_i-M) acc_i / sum_i e^(m_i-M) l_i.
#include "activations.cuh"
#include "rope.cuh"

// ---------------------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void kv_write_impl(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc,
                                              T* __restrict__ vc, int batch, int tokens, int kv_heads, int head_dim,
                                              int cap, int start, const int* start_ptr) {
    int s0 = kv_slot_start(start, start_ptr);
    int64_t total = (int64_t)batch * tokens * kv_heads * head_dim;
    for (int64_t i = global_thread_index(); i < total; i += grid_stride()) {
        int d = (int)(i % head_dim);
        int64_t rest = i / head_dim;
        int kh = (int)(rest % kv_heads);
        rest /= kv_heads;
        int t = (int)(rest % tokens);
        int b = (int)(rest / tokens);
        int64_t dst = (((int64_t)b * kv_heads + kh) * cap + s0 + t) * head_dim + d;
        kc[dst] = k[i];
        vc[dst] = v[i];
    }
}

// Lowest visible slot of a query in slot s.
__device__ __forceinline__ int visible_from(int s, int pad, int window) {
    return max(pad, window > 0 ? s - window + 1 : 0);
}

// ---------------------------------------------------------------------------------------------------------
// Flash prefill.
template <typename T, int D, int R>
__device__ __forceinline__ void prefill_impl(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                             T* __restrict__ out, const int* __restrict__ pad_start, int tokens,
                                             int heads, int kv_heads, int cap, int start, const int* start_ptr,
                                             float scale, int window) {
    constexpr int BQ = 4 * R, BK = 32, KS = D + 4, DPL = (D + 31) / 32;
    extern __shared__ float4 smem4[];
    float* q_s = reinterpret_cast<float*>(smem4);   // [BQ][D]
    float* k_s = q_s + BQ * D;                       // [BK][KS]
    float* v_s = k_s + BK * KS;                      // [BK][D]

    const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kv_heads);
    const int t0 = blockIdx.x * BQ;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int s0 = kv_slot_start(start, start_ptr);
    const int pad = pad_start[b];
    const int64_t q_stride = (int64_t)heads * D;

    for (int i = threadIdx.x; i < BQ * D; i += blockDim.x) {
        int r = i / D, d = i - r * D;
        int t = t0 + r;
        q_s[i] = t < tokens ? to_f32(q[((int64_t)b * tokens + t) * q_stride + (int64_t)h * D + d]) : 0.f;
    }

    int last_t = min(t0 + BQ, tokens) - 1;
    int kv_lo = visible_from(s0 + t0, pad, window);
    int kv_hi = s0 + last_t;
    const T* kbase = kc + ((int64_t)b * kv_heads + kh) * cap * D;
    const T* vbase = vc + ((int64_t)b * kv_heads + kh) * cap * D;

    float m[R], l[R], acc[R][DPL];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[r][c] = 0.f;
    }

    for (int kt = kv_lo; kt <= kv_hi; kt += BK) {
        __syncthreads();   // previous tile consumed (and q_s written, on the first pass)
        for (int i = threadIdx.x; i < BK * D; i += blockDim.x) {
            int j = i / D, d = i - j * D;
            int slot = kt + j;
            bool in = slot <= kv_hi;
            k_s[j * KS + d] = in ? to_f32(kbase[(int64_t)slot * D + d]) : 0.f;
            v_s[j * D + d] = in ? to_f32(vbase[(int64_t)slot * D + d]) : 0.f;
        }
        __syncthreads();

        // scores of key kt + lane against the warp's R queries
        float sc[R];
#pragma unroll
        for (int r = 0; r < R; r++) sc[r] = 0.f;
        const float4* krow = reinterpret_cast<const float4*>(k_s + lane * KS);
#pragma unroll 4
        for (int d4 = 0; d4 < D / 4; d4++) {
            float4 kv = krow[d4];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float4 qv = reinterpret_cast<const float4*>(q_s + (warp * R + r) * D)[d4];
                sc[r] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
            }
        }
        int slot = kt + lane;
        float p[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            int t = t0 + warp * R + r;
            int s = s0 + t;
            bool vis = t < tokens && slot <= s && slot >= visible_from(s, pad, window);
            float score = vis ? sc[r] * scale : -INFINITY;
            float m_new = fmaxf(m[r], warp_max(score));
            float alpha;
            if (m_new == -INFINITY) {   // nothing visible yet for this row
                p[r] = 0.f;
                alpha = 1.f;
            } else {
                p[r] = vis ? expf(score - m_new) : 0.f;
                alpha = expf(m[r] - m_new);   // m = -inf gives 0
            }
            l[r] = l[r] * alpha + warp_sum(p[r]);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < DPL; c++) acc[r][c] *= alpha;
        }
        // acc += p . V over the tile's 32 keys
#pragma unroll 4
        for (int jj = 0; jj < BK; jj++) {
            float vv[DPL];
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                int d = lane + 32 * c;
                vv[c] = d < D ? v_s[jj * D + d] : 0.f;
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                float pj = __shfl_sync(0xffffffffu, p[r], jj);
#pragma unroll
                for (int c = 0; c < DPL; c++) acc[r][c] += pj * vv[c];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        int t = t0 + warp * R + r;
        if (t >= tokens) continue;
        float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        T* o = out + ((int64_t)b * tokens + t) * q_stride + (int64_t)h * D;
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            int d = lane + 32 * c;
            if (d < D) o[d] = from_f32<T>(acc[r][c] * inv);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Output dimension d of one (batch, head) from its splits' partial states, base = (b * heads + h) * splits: the
// merge of attn_combine and of the decode's last-arriving block (one code, so both round the same). Loads bypass L1
// (__ldcg): in the fused path the partials were written by other blocks of the same grid.
template <int D>
__device__ __forceinline__ float combine_value(const float* part_ml, const float* part_acc, int64_t base, int splits,
                                               int d) {
    float mm = -INFINITY;
    for (int i = 0; i < splits; i++) mm = fmaxf(mm, __ldcg(part_ml + (base + i) * 2));
    float ll = 0.f, aa = 0.f;
    if (mm != -INFINITY) {
        for (int i = 0; i < splits; i++) {
            float f = expf(__ldcg(part_ml + (base + i) * 2) - mm);
            ll += __ldcg(part_ml + (base + i) * 2 + 1) * f;
            aa += __ldcg(part_acc + (base + i) * D + d) * f;
        }
    }
    return ll > 0.f ? aa / ll : 0.f;
}

// Split-K decode (T = 1).
// How many loads of a 32-slot group the decode keeps in flight at once: K_BATCH of a lane's K_PACKS 16-byte key
// pieces, VB value rows (a lane's DPL elements of each). 16-bit types with D <= 128: the whole group's keys and values
// in one batch each (about 128 registers for both); float32 activations: half as many key pieces and 8 value rows (more
// would spill at 8 query heads a block).
template <typename T, int D>
struct DecodeLoads {
    static constexpr bool HALF = sizeof(T) == 2;
    static constexpr int K_PACKS = D / Pack16<T>::N;
    static constexpr int K_MAX = HALF ? 16 : 8;
    static constexpr int K_BATCH = K_PACKS < K_MAX ? K_PACKS : K_MAX;
    static constexpr int V_BYTES = (D >= 32 ? D / 32 : 1) * (int)sizeof(T);
    static constexpr int VB = !HALF ? 8 : V_BYTES <= 8 ? 32 : 16;
};

// Pieces p0, p0 + STRIDE, ..., p0 + (N - 1) STRIDE of a key row (16 bytes each), all loads issued before any is used;
// zeros where !load.
template <typename T, int N, int STRIDE = 1>
__device__ __forceinline__ void load_key_pieces(const int4* __restrict__ krow, int p0, bool load, Pack16<T> (&kp)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) kp[i].raw = load ? krow[p0 + i * STRIDE] : make_int4(0, 0, 0, 0);
}

// The same pieces of the new slot's key from shared memory (ROPE decode).
template <typename T, int N, int STRIDE = 1>
__device__ __forceinline__ void new_key_pieces(const T* new_k, int p0, Pack16<T> (&kp)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) kp[i].raw = reinterpret_cast<const int4*>(new_k)[p0 + i * STRIDE];
}

template <int B> struct LoadWord;
template <> struct LoadWord<4> { using type = uint32_t; };
template <> struct LoadWord<8> { using type = uint2; };
template <> struct LoadWord<16> { using type = uint4; };

// A lane's N contiguous elements of a value row: one vector load where N * sizeof(T) is 4, 8 or 16 bytes (the row
// pieces are that aligned), else element by element; zero bits (the value 0) where !valid.
template <typename T, int N>
struct DecodeValuePiece {
    static constexpr int B = N * (int)sizeof(T);
    static constexpr bool VECTOR = B == 4 || B == 8 || B == 16;
    union {
        typename LoadWord<VECTOR ? B : 4>::type raw;
        T v[N];
    };
    __device__ __forceinline__ void load(const T* __restrict__ p, bool valid) {
        if constexpr (VECTOR) {
            using W = typename LoadWord<B>::type;
            raw = valid ? *reinterpret_cast<const W*>(p) : W{};
        } else {
#pragma unroll
            for (int c = 0; c < N; c++) v[c] = valid ? p[c] : from_f32<T>(0.f);
        }
    }
    // the piece from shared memory (the ROPE decode's new value row)
    __device__ __forceinline__ void load_shared(const T* p) {
#pragma unroll
        for (int c = 0; c < N; c++) v[c] = p[c];
    }
};
// DEC_GMAX: query heads one block serves (a template parameter: 1, 2, 4 or 8, the smallest power of two
// >= heads / kvHeads, capped at 8), so plain multi-head attention does no work for absent heads.
// Before waiting for the kernel that writes q and the new slot (programmatic dependent launch), one thread of the
// block asks L2 for the block's slots of the key and value cache (cp.async.bulk.prefetch, sm_90; the first
// DEC_PREFETCH_SLOTS of its chunk): the cache rows of earlier tokens do not change, and the loads after the wait then
// come from L2 instead of DRAM, one latency each for the key rows and every batch of value rows. Only a hint: the
// slot range is computed again after the wait, and whatever L2 holds stays coherent with later writes.
[[maybe_unused]] constexpr int DEC_PREFETCH_SLOTS = 256;
template <typename T, int D>
__device__ __forceinline__ void prefetch_decode_rows(const T* __restrict__ kc, const T* __restrict__ vc,
                                                     const int* __restrict__ pad_start, int kv_heads, int cap, int start,
                                                     const int* start_ptr, int window, int prefetch) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    if (!prefetch || threadIdx.x != 0) return;
    const int group_chunks = gridDim.y / kv_heads;   // blockIdx.y = kh * chunks + chunk (decode_impl)
    const int b = blockIdx.z, kh = blockIdx.y / group_chunks;
    const int s = kv_slot_start(start, start_ptr);
    const int lo = visible_from(s, pad_start[b], window);
    const int len = max(0, s - lo + 1);
    const int chunk = (len + gridDim.x - 1) / gridDim.x;
    const int c0 = lo + blockIdx.x * chunk, c1 = min(min(c0 + chunk, s + 1), c0 + DEC_PREFETCH_SLOTS);
    if (c1 <= c0) return;
    const int64_t row0 = ((int64_t)b * kv_heads + kh) * cap + c0;
    const uint32_t bytes = (uint32_t)(c1 - c0) * D * sizeof(T);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(kc + row0 * D), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(vc + row0 * D), "r"(bytes) : "memory");
#endif
}

// The RoPE of a decode step inside the attention (ROPE below; CudaBackend.ropeQkAttention): the new token's q [B, H*D]
// and k [B, KVH*D] unrotated, v [B, KVH*D], positions I32 [B], inv_freq F32 [D/2], the attention scaling of cos / sin,
// and the cache to write the new slot into (the same arrays the block reads through kc / vc, at slot s only, which
// the block never reads from there: its own rotated key and value stay in shared memory).
template <typename T>
struct DecodeRope {
    const T* k;
    const T* v;
    const int* positions;
    const float* inv_freq;
    float scaling;
    T* kc;
    T* vc;
};

// rope_cos_sin kept out of line: one copy of its double-precision sincos per module instead of one per RoPE decode
// kernel (a small share of the PTX; the kernels' batched loads are most of it). Called before the wait, off the
// decode's critical path.
__device__ __noinline__ void decode_rope_angle(int position, float inv_freq_i, float scaling, float* cs, float* sn) {
    rope_cos_sin(position, inv_freq_i, scaling, *cs, *sn);
}

// LPS (lanes per slot): 1, a lane scores one slot over the whole head dim (a warp: 32 slots at a time); 4, four lanes
// score a slot together, each over every fourth 16-byte piece of the key (interleaved, so the four lanes' q reads fall
// in different banks and their key loads are 64 contiguous bytes), their partial dots summed by two xor shuffles (all
// four lanes get the same sum) and a warp takes 8 slots at a time. Why: with one lane a slot a warp's chain for 32 slots
// is ~1,000 dependent instructions (the 128-long dot, 32 value rows), and a 160-slot cache keeps only 5 warps of a
// block busy: ncu on the 7B decode saw one instruction per warp every 12 cycles, 1-2 warps a scheduler, ~6.5 us a
// block. Four lanes a slot cut a warp's chain to about a third and spread the slots over all 16 warps of the block.
// The key's dot then sums in another order (four partial sums, then pairs of them): other bits than LPS 1.
template <typename T, int D, int DEC_GMAX, int NW, bool ROPE = false, int LPS = 1>
__device__ __forceinline__ void decode_impl(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                            T* __restrict__ out, float* __restrict__ part_ml,
                                            float* __restrict__ part_acc, const int* __restrict__ pad_start,
                                            int heads, int kv_heads, int cap, int start, const int* start_ptr,
                                            float scale, int window, int* __restrict__ counters, int prefetch,
                                            const DecodeRope<T>& rope = DecodeRope<T>{}) {
    constexpr int HALF = D / 2;
    // ROPE: the angles before the wait. positions and inv_freq come from host copies made before the step's kernels
    // (the decode graph's inputs, the model's table), never from a kernel, so pdl.cuh's contract holds
    __shared__ float rope_cs[ROPE ? HALF : 1], rope_sn[ROPE ? HALF : 1];
    if constexpr (ROPE) {
        for (int i = threadIdx.x; i < HALF; i += blockDim.x) {
            decode_rope_angle(rope.positions[blockIdx.z], rope.inv_freq[i], rope.scaling, &rope_cs[i], &rope_sn[i]);
        }
        __syncthreads();
    }
    prefetch_decode_rows<T, D>(kc, vc, pad_start, kv_heads, cap, start, start_ptr, window, prefetch);
    pdl_enter();
    constexpr int DPL = D >= 32 ? D / 32 : 1;         // output dims per lane (contiguous)
    constexpr int ACTIVE = D >= 32 ? 32 : D;           // lanes that own output dims
    constexpr int KV = Pack16<T>::N;                   // elements of one 16-byte key load
    using DL = DecodeLoads<T, D>;
    static_assert(LPS == 1 || (DL::HALF && LPS == 4 && DL::K_PACKS % LPS == 0), "lanes per slot: 1, or 4 for 16-bit types");
    constexpr int SPW = 32 / LPS;                                  // slots a warp takes at a time
    constexpr int KPL = DL::K_PACKS / LPS;                         // key pieces a lane dots (every LPS-th)
    constexpr int KB = KPL < DL::K_BATCH ? KPL : DL::K_BATCH;      // of them loaded in one batch
    constexpr int VB = DL::VB < SPW ? DL::VB : SPW;                // value rows loaded in one batch
    __shared__ float4 q_s4[DEC_GMAX * D / 4];
    __shared__ float w_m[NW][DEC_GMAX], w_l[NW][DEC_GMAX];
    __shared__ float w_acc[NW][DEC_GMAX][D];
    __shared__ __align__(16) T new_k[ROPE ? D : 8], new_v[ROPE ? D : 8];  // ROPE: the new slot's rotated key, value
    float* q_s = reinterpret_cast<float*>(q_s4);

    const int splits = gridDim.x, split = blockIdx.x, b = blockIdx.z;
    const int group = heads / kv_heads;
    const int chunks = (group + DEC_GMAX - 1) / DEC_GMAX;
    const int kh = blockIdx.y / chunks;
    const int h0 = kh * group + (blockIdx.y % chunks) * DEC_GMAX;
    const int g_count = min(DEC_GMAX, kh * group + group - h0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = LPS == 1 ? 0 : lane % LPS;          // the lane's share of its slot's key pieces
    const int lslot = LPS == 1 ? lane : lane / LPS;     // its slot within the warp's SPW

    const int s = kv_slot_start(start, start_ptr);
    const int lo = visible_from(s, pad_start[b], window);
    const int len = max(0, s - lo + 1);
    const int chunk = (len + splits - 1) / splits;
    const int c0 = lo + split * chunk;
    const int c1 = min(c0 + chunk, s + 1);

    const T* qrow = q + (int64_t)b * heads * D;
    // ROPE: whether this block's slots hold the new one (the last split's do)
    const bool has_new = ROPE && c0 <= s && s < c1;
    if constexpr (ROPE) {
        // q rotated as rope_qk_kv_write rotates it (each result rounded to T), then read as float as the cache's q was
        for (int i = threadIdx.x; i < DEC_GMAX * HALF; i += blockDim.x) {
            const int g = i / HALF, d = i - g * HALF;
            if (g < g_count) {
                const T* e = qrow + (int64_t)(h0 + g) * D + d;
                T ra, rb;
                rope_rotate_pair<T, false>(to_f32(e[0]), to_f32(e[HALF]), rope_cs[d], rope_sn[d], ra, rb);
                q_s[g * D + d] = to_f32(ra);
                q_s[g * D + d + HALF] = to_f32(rb);
            } else {
                q_s[g * D + d] = q_s[g * D + d + HALF] = 0.f;
            }
        }
        if (has_new) {
            // the new slot's key rotated and its value, for this block's scores (shared memory) and for later steps
            // (the cache; one block of each kv head writes it: the first query-head chunk's)
            const int64_t src = (int64_t)b * kv_heads * D + (int64_t)kh * D;
            const int64_t dst = (((int64_t)b * kv_heads + kh) * cap + s) * D;
            const bool write = blockIdx.y % chunks == 0;
            for (int d = threadIdx.x; d < HALF; d += blockDim.x) {
                T ra, rb;
                rope_rotate_pair<T, false>(to_f32(rope.k[src + d]), to_f32(rope.k[src + d + HALF]), rope_cs[d],
                                           rope_sn[d], ra, rb);
                new_k[d] = ra;
                new_k[d + HALF] = rb;
                if (write) {
                    rope.kc[dst + d] = ra;
                    rope.kc[dst + d + HALF] = rb;
                }
            }
            for (int d = threadIdx.x; d < D; d += blockDim.x) {
                const T vv = rope.v[src + d];
                new_v[d] = vv;
                if (write) rope.vc[dst + d] = vv;
            }
        }
    } else {
        for (int i = threadIdx.x; i < DEC_GMAX * D; i += blockDim.x) {
            int g = i / D, d = i - g * D;
            q_s[i] = g < g_count ? to_f32(qrow[(int64_t)(h0 + g) * D + d]) : 0.f;
        }
    }
    __syncthreads();

    const T* kbase = kc + ((int64_t)b * kv_heads + kh) * cap * D;
    const T* vbase = vc + ((int64_t)b * kv_heads + kh) * cap * D;
    float m[DEC_GMAX], l[DEC_GMAX], acc[DEC_GMAX][DPL];
#pragma unroll
    for (int g = 0; g < DEC_GMAX; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int c = 0; c < DPL; c++) acc[g][c] = 0.f;
    }

    for (int base = c0 + warp * SPW; base < c1; base += NW * SPW) {
        const int slot = base + lslot;
        const bool vis = slot < c1;
        const int n_keys = min(SPW, c1 - base);
        const T* vtile = vbase + (int64_t)base * D + lane * DPL;
        const int4* krow = reinterpret_cast<const int4*>(kbase + (int64_t)slot * D);
        // the group's first key pieces and first value rows go out together, before any of them is used: one memory
        // latency for both where they fit one batch (the common head dims in 16-bit types), instead of one per batch
        // of 4 key pieces and one per batch of 8 value rows
        // ROPE: the new slot's key and value come from shared memory, never from the cache this kernel writes
        const bool new_key = has_new && slot == s;
        Pack16<T> kp[KB];
        DecodeValuePiece<T, DPL> vv[VB];
        load_key_pieces<T, KB, LPS>(krow, sub, vis && !new_key, kp);
#pragma unroll
        for (int u = 0; u < VB; u++) {
            vv[u].load(vtile + (int64_t)u * D, lane < ACTIVE && u < n_keys && !(has_new && base + u == s));
        }
        if (has_new) {
            if (new_key) new_key_pieces<T, KB, LPS>(new_k, sub, kp);
#pragma unroll
            for (int u = 0; u < VB; u++) {
                if (base + u == s && lane < ACTIVE) vv[u].load_shared(new_v + lane * DPL);
            }
        }

        float sc[DEC_GMAX];
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) sc[g] = 0.f;
        // the lane's key pieces (sub, sub + LPS, ...), element e, query g in ascending order (the same sums as one piece
        // at a time)
#pragma unroll
        for (int p0 = 0; p0 < KPL; p0 += KB) {
            if (p0 > 0) {
                load_key_pieces<T, KB, LPS>(krow, sub + p0 * LPS, vis && !new_key, kp);
                if (new_key) new_key_pieces<T, KB, LPS>(new_k, sub + p0 * LPS, kp);
            }
#pragma unroll
            for (int pp = 0; pp < KB; pp++) {
                const int piece = sub + (p0 + pp) * LPS;
#pragma unroll
                for (int e = 0; e < KV; e++) {
                    float kf = to_f32(kp[pp].v[e]);
#pragma unroll
                    for (int g = 0; g < DEC_GMAX; g++) sc[g] += q_s[g * D + piece * KV + e] * kf;
                }
            }
        }
        if constexpr (LPS > 1) {  // the slot's LPS partial dots, summed pairwise: every lane of the slot gets the same
#pragma unroll
            for (int g = 0; g < DEC_GMAX; g++) {
#pragma unroll
                for (int o = 1; o < LPS; o <<= 1) sc[g] += __shfl_xor_sync(0xffffffffu, sc[g], o);
            }
        }
        float p[DEC_GMAX];
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) {
            float score = vis ? sc[g] * scale : -INFINITY;
            float m_new = fmaxf(m[g], warp_max(score));   // never -inf: slot base is visible
            p[g] = vis ? expf(score - m_new) : 0.f;
            float alpha = expf(m[g] - m_new);
            l[g] = l[g] * alpha + warp_sum(LPS == 1 || sub == 0 ? p[g] : 0.f);  // each slot once
            m[g] = m_new;
#pragma unroll
            for (int c = 0; c < DPL; c++) acc[g][c] *= alpha;
        }
        // value rows key by key ascending (the same order as one key at a time), VB rows a batch
        for (int j0 = 0; j0 < n_keys; j0 += VB) {
            if (j0 > 0) {
#pragma unroll
                for (int u = 0; u < VB; u++) {
                    const bool is_new = has_new && base + j0 + u == s;
                    vv[u].load(vtile + (int64_t)(j0 + u) * D, lane < ACTIVE && j0 + u < n_keys && !is_new);
                    if (is_new && lane < ACTIVE) vv[u].load_shared(new_v + lane * DPL);
                }
            }
#pragma unroll
            for (int u = 0; u < VB; u++) {
                if (j0 + u >= n_keys) break;  // warp-uniform
#pragma unroll
                for (int g = 0; g < DEC_GMAX; g++) {
                    float pj = __shfl_sync(0xffffffffu, p[g], (j0 + u) * LPS);
#pragma unroll
                    for (int c = 0; c < DPL; c++) acc[g][c] += pj * to_f32(vv[u].v[c]);
                }
            }
        }
    }

    // merge the NW warps
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) {
            w_m[warp][g] = m[g];
            w_l[warp][g] = l[g];
        }
    }
    if (lane < ACTIVE) {
#pragma unroll
        for (int g = 0; g < DEC_GMAX; g++) {
#pragma unroll
            for (int c = 0; c < DPL; c++) w_acc[warp][g][lane * DPL + c] = acc[g][c];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < g_count * D; i += blockDim.x) {
        int g = i / D, d = i - g * D;
        float mm = fmaxf(fmaxf(w_m[0][g], w_m[1][g]), fmaxf(w_m[2][g], w_m[3][g]));
#pragma unroll
        for (int w = 4; w < NW; w++) mm = fmaxf(mm, w_m[w][g]);
        float ll = 0.f, aa = 0.f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int w = 0; w < NW; w++) {
                float f = expf(w_m[w][g] - mm);
                ll += w_l[w][g] * f;
                aa += w_acc[w][g][d] * f;
            }
        }
        int h = h0 + g;
        if (splits == 1) {
            out[((int64_t)b * heads + h) * D + d] = from_f32<T>(ll > 0.f ? aa / ll : 0.f);
        } else {
            int64_t ps = ((int64_t)b * heads + h) * splits + split;
            part_acc[ps * D + d] = aa;
            if (d == 0) {
                part_ml[ps * 2] = mm;
                part_ml[ps * 2 + 1] = ll;
            }
        }
    }
    if (splits == 1 || counters == nullptr) return;
    // The block of this head group that arrives last merges the splits (instead of a separate attn_combine launch):
    // every block publishes its partials (fence), then counts itself in; the last one reads them all and resets the
    // counter for the next launch (all of this launch's blocks have counted by then).
    __shared__ int merge_here;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* counter = counters + (int64_t)b * gridDim.y + blockIdx.y;
        merge_here = atomicAdd(counter, 1) == splits - 1;
        if (merge_here) *counter = 0;
    }
    __syncthreads();
    if (!merge_here) return;
    __threadfence();
    for (int i = threadIdx.x; i < g_count * D; i += blockDim.x) {
        int g = i / D, d = i - g * D;
        int h = h0 + g;
        int64_t base = ((int64_t)b * heads + h) * splits;
        out[((int64_t)b * heads + h) * D + d] = from_f32<T>(combine_value<D>(part_ml, part_acc, base, splits, d));
    }
}

template <typename T, int D>
__device__ __forceinline__ void combine_impl(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                             T* __restrict__ out, int heads, int splits) {
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    if (d >= D) return;
    int64_t base = ((int64_t)b * heads + h) * splits;
    out[((int64_t)b * heads + h) * D + d] = from_f32<T>(combine_value<D>(part_ml, part_acc, base, splits, d));
}

// ---------------------------------------------------------------------------------------------------------
#define QL_ATTN_DECODE_NWL(tn, T, D, GM, NW, LPS, suffix)                                                        \
    extern "C" __global__ void __launch_bounds__(NW * 32) attn_decode_##tn##_d##D##_g##GM##suffix(              \
        const T* q, const T* kc, const T* vc, T* out, float* part_ml, float* part_acc, const int* pad_start,     \
        int heads, int kv_heads, int cap, int start, const int* start_ptr, float scale, int window,              \
        int* counters, int prefetch) {                                                                          \
        decode_impl<T, D, GM, NW, false, LPS>(q, kc, vc, out, part_ml, part_acc, pad_start, heads, kv_heads,     \
                                              cap, start, start_ptr, scale, window, counters, prefetch);        \
    }
#define QL_ATTN_DECODE_NW(tn, T, D, GM, NW, suffix) QL_ATTN_DECODE_NWL(tn, T, D, GM, NW, 1, suffix)
#define QL_ATTN_DECODE(tn, T, D, GM) QL_ATTN_DECODE_NW(tn, T, D, GM, 4, )
// The decode with the new token's RoPE and cache write (decode_impl's ROPE; AttentionKernels.decodeRoped): the same
// arguments, with q, k unrotated, then k, v [B, KVH*D], positions I32 [B], inv_freq F32 [D/2], the scaling. D 64, 128.
#define QL_ATTN_DECODE_ROPE_L(tn, T, D, GM, NW, LPS, suffix)                                                     \
    extern "C" __global__ void __launch_bounds__(NW * 32) attn_decode_rope_##tn##_d##D##_g##GM##suffix(         \
        const T* q, T* kc, T* vc, T* out, float* part_ml, float* part_acc, const int* pad_start,                 \
        int heads, int kv_heads, int cap, int start, const int* start_ptr, float scale, int window,              \
        int* counters, int prefetch, const T* k, const T* v, const int* positions, const float* inv_freq,        \
        float scaling) {                                                                                        \
        decode_impl<T, D, GM, NW, true, LPS>(q, kc, vc, out, part_ml, part_acc, pad_start, heads, kv_heads, cap, \
                                             start, start_ptr, scale, window, counters, prefetch,               \
                                             DecodeRope<T>{k, v, positions, inv_freq, scaling, kc, vc});         \
    }
#define QL_ATTN_DECODE_ROPE(tn, T, D, GM, NW, suffix) QL_ATTN_DECODE_ROPE_L(tn, T, D, GM, NW, 1, suffix)
#define QL_ATTN_DECODE_ROPE_D(tn, T, D)                                                                          \
    QL_ATTN_DECODE_ROPE(tn, T, D, 1, 4, ) QL_ATTN_DECODE_ROPE(tn, T, D, 2, 4, )                                 \
    QL_ATTN_DECODE_ROPE(tn, T, D, 4, 4, ) QL_ATTN_DECODE_ROPE(tn, T, D, 8, 4, )                                 \
    QL_ATTN_DECODE_ROPE(tn, T, D, 1, 8, _w8) QL_ATTN_DECODE_ROPE(tn, T, D, 2, 8, _w8)                           \
    QL_ATTN_DECODE_ROPE(tn, T, D, 4, 8, _w8) QL_ATTN_DECODE_ROPE(tn, T, D, 8, 8, _w8)
// 8 warps a block (one split over up to 256 slots in one pass of the warps; AttentionKernels.decodeWarps): D <= 128,
// so the warps' merge buffers stay within the static shared memory
#define QL_ATTN_DECODE_W8(tn, T, D)                                                                              \
    QL_ATTN_DECODE_NW(tn, T, D, 1, 8, _w8)                                                                      \
    QL_ATTN_DECODE_NW(tn, T, D, 2, 8, _w8)                                                                      \
    QL_ATTN_DECODE_NW(tn, T, D, 4, 8, _w8)                                                                      \
    QL_ATTN_DECODE_NW(tn, T, D, 8, 8, _w8)

#define QL_ATTN_D(tn, T, D, R)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_##tn##_d##D(                                 \
        const T* q, const T* kc, const T* vc, T* out, const int* pad_start, int tokens, int heads, int kv_heads, \
        int cap, int start, const int* start_ptr, float scale, int window) { pdl_enter();                                    \
        prefill_impl<T, D, R>(q, kc, vc, out, pad_start, tokens, heads, kv_heads, cap, start, start_ptr, scale,  \
                              window);                                                                          \
    }                                                                                                           \
    QL_ATTN_DECODE(tn, T, D, 1)                                                                                 \
    QL_ATTN_DECODE(tn, T, D, 2)                                                                                 \
    QL_ATTN_DECODE(tn, T, D, 4)                                                                                 \
    QL_ATTN_DECODE(tn, T, D, 8)                                                                                 \
    extern "C" __global__ void attn_combine_##tn##_d##D(const float* part_ml, const float* part_acc, T* out,     \
                                                       int heads, int splits) { pdl_enter();                                 \
        combine_impl<T, D>(part_ml, part_acc, out, heads, splits);                                              \
    }

#define QL_ATTN(tn, T)                                                                                           \
    extern "C" __global__ void kv_write_##tn(const T* k, const T* v, T* kc, T* vc, int batch, int tokens,        \
                                             int kv_heads, int head_dim, int cap, int start, const int* start_ptr) { pdl_enter(); \
        kv_write_impl<T>(k, v, kc, vc, batch, tokens, kv_heads, head_dim, cap, start, start_ptr);               \
    }                                                                                                           \
    QL_ATTN_D(tn, T, 16, 8)                                                                                     \
    QL_ATTN_D(tn, T, 32, 8)                                                                                     \
    QL_ATTN_D(tn, T, 64, 8)                                                                                     \
    QL_ATTN_D(tn, T, 96, 8)                                                                                     \
    QL_ATTN_D(tn, T, 128, 8)                                                                                    \
    QL_ATTN_DECODE_W8(tn, T, 16)                                                                                \
    QL_ATTN_DECODE_W8(tn, T, 32)                                                                                \
    QL_ATTN_DECODE_W8(tn, T, 64)                                                                                \
    QL_ATTN_DECODE_W8(tn, T, 96)                                                                                \
    QL_ATTN_DECODE_W8(tn, T, 128)                                                                               \
    QL_ATTN_DECODE_ROPE_D(tn, T, 64)                                                                            \
    QL_ATTN_DECODE_ROPE_D(tn, T, 128)                                                                           \
    QL_ATTN_D(tn, T, 256, 4)

QL_FOR_ACT(QL_ATTN)

// Four lanes a slot on 16 warps (decode_impl's LPS 4; AttentionKernels.decodeForm): one split, bf16 activations, head
// dims 64 and 128, up to 4 query heads a block (the 16 warps' merge buffers: 16 x 4 x 128 floats, 32 KiB), with and
// without the RoPE.
#define QL_ATTN_DECODE_L4_G(tn, T, D, GM)                                                                        \
    QL_ATTN_DECODE_NWL(tn, T, D, GM, 16, 4, _l4) QL_ATTN_DECODE_ROPE_L(tn, T, D, GM, 16, 4, _l4)
// The same on 8 warps (_l4w8): the splits of longer caches (any query heads a block) and one split at 8 query heads a
// block (with the RoPE).
#define QL_ATTN_DECODE_L4W8_D(tn, T, D)                                                                          \
    QL_ATTN_DECODE_NWL(tn, T, D, 1, 8, 4, _l4w8) QL_ATTN_DECODE_NWL(tn, T, D, 2, 8, 4, _l4w8)                   \
    QL_ATTN_DECODE_NWL(tn, T, D, 4, 8, 4, _l4w8) QL_ATTN_DECODE_NWL(tn, T, D, 8, 8, 4, _l4w8)                   \
    QL_ATTN_DECODE_ROPE_L(tn, T, D, 8, 8, 4, _l4w8)
#define QL_ATTN_DECODE_L4(tn, T)                                                                                 \
    QL_ATTN_DECODE_L4_G(tn, T, 64, 1) QL_ATTN_DECODE_L4_G(tn, T, 64, 2) QL_ATTN_DECODE_L4_G(tn, T, 64, 4)       \
    QL_ATTN_DECODE_L4_G(tn, T, 128, 1) QL_ATTN_DECODE_L4_G(tn, T, 128, 2) QL_ATTN_DECODE_L4_G(tn, T, 128, 4)    \
    QL_ATTN_DECODE_L4W8_D(tn, T, 64) QL_ATTN_DECODE_L4W8_D(tn, T, 128)
QL_ATTN_DECODE_L4(bf16, __nv_bfloat16)
