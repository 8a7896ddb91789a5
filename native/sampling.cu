// sampling.cu — the greedy or sampled token of each row of a decode step's logits, on the GPU, so that a decode step
// sends back one token id per row instead of its logits (infer/Generator's device pick; backend/cuda/SamplingKernels).
//
//   argmax_rows_<t>   logits [B, V] (T = float, bf16 or half) -> token [B] (int32): the index of the row's largest
//                     logit, as infer/Sampler.argmax scans it (the first index on ties; a logit that is NaN never wins,
//                     except that a NaN first logit gives 0), after Sampler's repetition penalty on the ids flagged in
//                     seen [B, V] (bytes, or null; the pick is flagged for the next step) and with up to four excluded
//                     ids (e0..e3, the first n_excluded of them) read as -infinity, as Sampler's EOS suppression before
//                     min_new_tokens. next_ids [B] (or null) gets the same ids: the next decode step's input, so a
//                     replayed graph can run on without the host (CudaDecodeGraph's pipelined steps). grid B blocks,
//                     ARGMAX_THREADS threads.
//
// Why the scan's answer comes out of a tree: for non-NaN values "larger, then smaller index" is a total order, so any
// reduction order picks the first index of the maximum, which is what a left-to-right scan with `>` keeps; NaN logits
// are skipped (the scan never moves to one, and never sits on one unless it is the first).
#include "activations.cuh"

constexpr int ARGMAX_THREADS = 512;
constexpr int ARGMAX_EMPTY = 0x7FFFFFFF;  // index of "no candidate yet"
constexpr int ARGMAX_UNROLL = 8;          // 16-byte loads a thread issues before using them (8 x 512 x 8 bf16: 32,768)

// Sampler.next's first steps on logit x of token i: the repetition penalty on the ids seen so far (seen: the row's [V]
// flags, or null; CTRL's rule as the host's float arithmetic: a negative logit multiplied by penalty, any other
// divided), then the excluded ids (e0..e3, the first n_excluded of them) at -infinity.
__device__ __forceinline__ float penalized(float x, int i, const unsigned char* seen, float penalty, int n_excluded,
                                          int e0, int e1, int e2, int e3) {
    if (seen != nullptr && seen[i]) x = x < 0 ? __fmul_rn(x, penalty) : __fdiv_rn(x, penalty);
    const bool out = (n_excluded > 0 && i == e0) || (n_excluded > 1 && i == e1) || (n_excluded > 2 && i == e2)
                     || (n_excluded > 3 && i == e3);
    return out ? -INFINITY : x;
}

// Whether (v, i) beats (bv, bi) (bi == ARGMAX_EMPTY: none yet).
__device__ __forceinline__ bool argmax_beats(float v, int i, float bv, int bi) {
    return bi == ARGMAX_EMPTY || v > bv || (v == bv && i < bi);
}

// The best (bv, bi) of the warp's lanes, into lane 0.
__device__ __forceinline__ void argmax_warp(float& bv, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_down_sync(0xFFFFFFFFu, bv, o);
        const int oi = __shfl_down_sync(0xFFFFFFFFu, bi, o);
        if (oi != ARGMAX_EMPTY && argmax_beats(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
}

template <typename T>
__device__ __forceinline__ void argmax_row(const T* __restrict__ logits, int vocab, unsigned char* seen_all,
                                           float penalty, int n_excluded, int e0, int e1, int e2, int e3,
                                           int* __restrict__ token, int* __restrict__ next_ids) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    const T* row = logits + (int64_t)blockIdx.x * vocab;
    unsigned char* seen = seen_all ? seen_all + (int64_t)blockIdx.x * vocab : nullptr;
    auto value = [&](int i) { return penalized(to_f32(row[i]), i, seen, penalty, n_excluded, e0, e1, e2, e3); };
    if (isnan(value(0))) {  // the scan starts on index 0 and never leaves a NaN
        if (threadIdx.x == 0) {
            token[blockIdx.x] = 0;
            if (next_ids) next_ids[blockIdx.x] = 0;
            if (seen) seen[0] = 1;
        }
        return;
    }
    float bv = -INFINITY;
    int bi = ARGMAX_EMPTY;
    auto consider = [&](int i, float logit) {
        const float v = penalized(logit, i, seen, penalty, n_excluded, e0, e1, e2, e3);
        if (!isnan(v) && argmax_beats(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    };
    // 16-byte pieces, ARGMAX_UNROLL of them a thread loaded before any is used: one memory latency for a 32,000-logit
    // row instead of one per logit a thread (28.6 -> 8.5-9.9 us under ncu on the H200; the decode loop's tokens/s moved
    // within its spread). The row must start on a 16-byte boundary (rows of an odd vocabulary may not); the remainder
    // goes one logit at a time.
    using P = Pack16<T>;
    const int pieces = (reinterpret_cast<uintptr_t>(row) & 15) == 0 ? vocab / P::N : 0;
    const int4* row16 = reinterpret_cast<const int4*>(row);
    for (int p0 = threadIdx.x; p0 < pieces; p0 += blockDim.x * ARGMAX_UNROLL) {
        P pk[ARGMAX_UNROLL];
#pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; u++) {
            const int p = p0 + u * (int)blockDim.x;
            if (p < pieces) pk[u].raw = row16[p];
        }
#pragma unroll
        for (int u = 0; u < ARGMAX_UNROLL; u++) {
            const int p = p0 + u * (int)blockDim.x;
            if (p < pieces) {
#pragma unroll
                for (int e = 0; e < P::N; e++) consider(p * P::N + e, to_f32(pk[u].v[e]));
            }
        }
    }
    for (int i = pieces * P::N + threadIdx.x; i < vocab; i += blockDim.x) consider(i, to_f32(row[i]));
    argmax_warp(bv, bi);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = lane < warps ? s_v[lane] : -INFINITY;
        bi = lane < warps ? s_i[lane] : ARGMAX_EMPTY;
        argmax_warp(bv, bi);
        if (lane == 0) {  // never empty: index 0 is a candidate (its value is not NaN)
            token[blockIdx.x] = bi;
            if (next_ids) next_ids[blockIdx.x] = bi;
            if (seen) seen[bi] = 1;  // the next step's penalty sees it
        }
    }
}

#define QL_ARGMAX(tn, T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows_##tn(                               \
        const T* __restrict__ logits, int vocab, unsigned char* seen, float penalty, int n_excluded, int e0,     \
        int e1, int e2, int e3, int* __restrict__ token, int* __restrict__ next_ids) {                            \
        argmax_row<T>(logits, vocab, seen, penalty, n_excluded, e0, e1, e2, e3, token, next_ids);                 \
    }
QL_ARGMAX(f32, float)
QL_ARGMAX(bf16, __nv_bfloat16)
QL_ARGMAX(f16, __half)

// ---------------------------------------------------------------------------------------------------------------------
//   sample_prepare_<t> then sample_rows: logits [B, V] -> token [B] (and next_ids [B], or null): infer.Sampler's
//                     sampled choice for the uniform draw uniforms[b] (the host draws it from the row's seeded stream,
//                     so a seed gives the host path's tokens): the repetition penalty on the ids flagged in seen (as
//                     argmax_rows), excluded ids at -infinity, x / temperature (IEEE division, as the host's float
//                     divide), top-k (0 < top_k < V: keep values >= the k-th largest, ties at it kept), top-p
//                     (one_minus_p > 0: drop the longest prefix of the ascending (value, index) order whose cumulative
//                     probability stays <= 1 - p, never the last), then the first index whose cumulative probability
//                     in index order exceeds u (probabilities in double, as the host's). Scratch: keys [B, V] (uint32,
//                     each row's order keys), masses [B, V] (double, e^(v - max) for top-p over the whole row),
//                     hist [B, SAMPLE_BINS] (int) and max_key [B] (uint32), both zero before the first launch
//                     (sample_rows leaves them zero). A row holding NaN or +infinity has no distribution:
//                     sample_prepare reports code 4 (row, vocab) in status (the host then throws, as Sampler does).
//                     sample_prepare: grid (G, B) blocks of SAMPLE_THREADS, a slice of a row each; sample_rows: grid B
//                     blocks of SAMPLE_THREADS.
//
// The first pass (sample_prepare, G blocks a row: one block would leave the row one SM) keeps each value's order key
// (later passes read 4 bytes instead of converting, masking and dividing again), counts the keys by their top 12 bits
// and finds the largest. From the counts, the candidates: with top-k the items of the top bins that hold the k
// largest; with top-p alone the top bins that fit SAMPLE_LIST, if top-p drops everything below them (peaked
// distributions). When they fit, one pass copies them (index order) into a shared list and top-k's threshold, top-p
// and the draw run there; otherwise over the whole row. top-k is a radix select on the keys (the smallest key K with
// count(key <= K) > n - k, 8 bits a pass into a shared histogram). top-p on a list of at most SAMPLE_THREADS items
// sorts it (top_p_cut_sorted); otherwise it is "the smallest key K whose cumulative probability (ascending) exceeds
// 1 - p", found 4 bits a pass (the probability per 16 digit values of the keys still in the bucket; 8 passes), and
// the ties at that key are cut by index as the host's stable order does: the first j0 of them (index order) go, j0
// from the mass below and the tie's probability. The draw sums the kept mass of 128 index-order segments (each warp's
// lanes on consecutive items), and one warp walks the segment whose cumulative mass passes u. Every pass loads
// SAMPLE_UNROLL items a thread before using them. The sums run in another order than the host's sequential ones, so a
// row whose cumulative mass lands within ~1e-16 of 1 - p or of u could pick differently.
// ---------------------------------------------------------------------------------------------------------------------
constexpr int SAMPLE_THREADS = 512;
constexpr int SAMPLE_WARPS = SAMPLE_THREADS / 32;
constexpr int SAMPLE_DIGITS = 16;  // 4 bits of the key a pass
constexpr int SAMPLE_LIST = 4096;  // top-k survivors kept in shared memory (index order) for top-p and the draw
constexpr int SAMPLE_UNROLL = 8;   // items a thread loads before using them
constexpr int SAMPLE_BIN_SHIFT = 20;  // the first pass counts keys by their top 12 bits (1/8 of a binade)
constexpr int SAMPLE_BINS = 1 << (32 - SAMPLE_BIN_SHIFT);
constexpr int SAMPLE_SEGMENTS = 128;  // the draw's index-order pieces (sums, then one warp walks the piece holding u)

// A key whose unsigned order is Float.compare's (NaN as Java's canonical NaN, above +infinity).
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned b = isnan(v) ? 0x7FC00000u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// The block's sum of v (every thread gets it; a fixed order, so the same inputs give the same sum).
template <typename W>
__device__ __forceinline__ W sample_block_sum(W v, W* s_warp) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = v;
    __syncthreads();
    W t = 0;
#pragma unroll
    for (int w = 0; w < SAMPLE_WARPS; w++) t += s_warp[w];
    __syncthreads();
    return t;
}

// The block's reduction of v by op (min, max: associative and commutative), every thread gets it.
template <typename W, typename Op>
__device__ __forceinline__ W sample_block_reduce(W v, W* s_warp, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = v;
    __syncthreads();
    W t = s_warp[0];
#pragma unroll
    for (int w = 1; w < SAMPLE_WARPS; w++) t = op(t, s_warp[w]);
    __syncthreads();
    return t;
}

__device__ __forceinline__ int sample_block_min(int v, int* s_warp) {
    return sample_block_reduce(v, s_warp, [](int a, int b) { return min(a, b); });
}

__device__ __forceinline__ float sample_block_max(float v, float* s_warp) {
    return sample_block_reduce(v, s_warp, [](float a, float b) { return fmaxf(a, b); });
}

// use(i, valid, load(i)) for i = from + threadIdx.x + SAMPLE_THREADS * t over [from, n), SAMPLE_UNROLL items a thread
// at a time with their loads issued first (one load in flight a warp left the passes waiting on L2 latency). The trips
// are the block's (use may run warp collectives; valid says whether i < n).
template <typename Load, typename Use>
__device__ __forceinline__ void for_items(int n, Load load, Use use, int from = 0) {
    for (int base = from; base < n; base += SAMPLE_THREADS * SAMPLE_UNROLL) {
        decltype(load(0)) v[SAMPLE_UNROLL];
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int i = base + u * SAMPLE_THREADS + threadIdx.x;
            v[u] = i < n ? load(i) : decltype(load(0)){};
        }
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int i = base + u * SAMPLE_THREADS + threadIdx.x;
            use(i, i < n, v[u]);
        }
    }
}

// The same over [lo, hi) for one warp, its lanes on consecutive items (index order within each step of 32).
template <typename Load, typename Use>
__device__ __forceinline__ void for_warp_items(int lo, int hi, Load load, Use use) {
    const int lane = threadIdx.x & 31;
    for (int base = lo; base < hi; base += 32 * SAMPLE_UNROLL) {
        decltype(load(0)) v[SAMPLE_UNROLL];
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int j = base + u * 32 + lane;
            v[u] = j < hi ? load(j) : decltype(load(0)){};
        }
#pragma unroll
        for (int u = 0; u < SAMPLE_UNROLL; u++) {
            const int j = base + u * 32 + lane;
            if (!use(j, j < hi, v[u])) return;  // use returns false to stop (warp-uniformly)
        }
    }
}

// The smallest key K with W(key <= K) > target over n items (item i = load(i), its key item.k, its weight
// weight_of(item): only the items still in the bucket are weighed), 4 bits a pass, counting start below every item;
// *below = start + W(key < K). Returns false when W(all) <= target
// (no such key). A later pass whose digit sums (added in another order than the bucket's total) do not reach the
// target takes the bucket's last weighted digit.
template <typename Load, typename WeightOf>
__device__ bool search_key(int n, Load load, WeightOf weight_of, double start, double target, unsigned* key_out,
                           double* below_out) {
    __shared__ double s_w[SAMPLE_WARPS][SAMPLE_DIGITS];
    __shared__ double s_tot[SAMPLE_DIGITS];
    unsigned prefix = 0;
    double below = start;
    for (int shift = 32 - 4; shift >= 0; shift -= 4) {
        const unsigned hi = shift == 28 ? 0u : 0xFFFFFFFFu << (shift + 4);
        double acc[SAMPLE_DIGITS];
#pragma unroll
        for (int d = 0; d < SAMPLE_DIGITS; d++) acc[d] = 0;
        for_items(n, load, [&](int, bool valid, const auto& item) {
            const unsigned k = item.k;
            if (!valid || (k & hi) != prefix) return;
            const double w = weight_of(item);
            const unsigned digit = (k >> shift) & (SAMPLE_DIGITS - 1);
#pragma unroll
            for (int d = 0; d < SAMPLE_DIGITS; d++) acc[d] += digit == (unsigned)d ? w : 0.0;
        });
#pragma unroll
        for (int d = 0; d < SAMPLE_DIGITS; d++) {
            double v = acc[d];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
            if ((threadIdx.x & 31) == 0) s_w[threadIdx.x >> 5][d] = v;
        }
        __syncthreads();
        if (threadIdx.x < SAMPLE_DIGITS) {
            double t = 0;
#pragma unroll
            for (int w = 0; w < SAMPLE_WARPS; w++) t += s_w[w][threadIdx.x];
            s_tot[threadIdx.x] = t;
        }
        __syncthreads();
        int digit = -1, last = -1;
        double run = below, before_last = below;
        for (int d = 0; d < SAMPLE_DIGITS; d++) {
            if (s_tot[d] > 0) {
                last = d;
                before_last = run;
            }
            if (run + s_tot[d] > target) {
                digit = d;
                break;
            }
            run += s_tot[d];
        }
        __syncthreads();  // s_tot is rewritten next pass
        if (digit < 0) {
            if (shift == 28 || last < 0) return false;
            digit = last;
            run = before_last;
        }
        below = run;
        prefix |= (unsigned)digit << shift;
    }
    *key_out = prefix;
    *below_out = below;
    return true;
}

// The sum of v over lanes 0..lane of the warp (an inclusive scan; every lane takes part).
template <typename W>
__device__ __forceinline__ W warp_inclusive_scan(W v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const W t = __shfl_up_sync(0xFFFFFFFFu, v, o);
        if (lane >= o) v += t;
    }
    return v;
}

// Lane l's N consecutive entries v[N l .. N l + N) into c; returns their sum over lanes 0..l (*own: lane l's alone).
template <int N, typename W>
__device__ __forceinline__ W lane_entries_scan(const W* v, W (&c)[N], W* own) {
    const int lane = threadIdx.x & 31;
    W sum = 0;
#pragma unroll
    for (int j = 0; j < N; j++) {
        c[j] = v[lane * N + j];
        sum += c[j];
    }
    *own = sum;
    return warp_inclusive_scan(sum);
}

// The smallest key K with count(key <= K) > rank over keys[0..n) (the k-th largest of n is rank n - k): 8 bits a pass
// into one shared histogram, the lanes of a warp with the same bin adding once. keys were written by this block.
__device__ unsigned select_rank_key(const unsigned* keys, int n, int rank) {
    __shared__ int s_hist[256];
    __shared__ int s_digit, s_below;
    const int lane = threadIdx.x & 31;
    unsigned prefix = 0;
    int below = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) s_hist[b] = 0;
        __syncthreads();
        const unsigned hi = shift == 24 ? 0u : 0xFFFFFFFFu << (shift + 8);
        for_items(n, [&](int i) { return keys[i]; }, [&](int, bool valid, unsigned k) {
            const bool in = valid && (k & hi) == prefix;
            const unsigned act = __ballot_sync(0xFFFFFFFFu, in);
            if (in) {
                const unsigned bin = (k >> shift) & 255u;
                const unsigned peers = __match_any_sync(act, bin);
                if (lane == __ffs(peers) - 1) atomicAdd(&s_hist[bin], __popc(peers));
            }
        });
        __syncthreads();
        if (threadIdx.x < 32) {  // lane l holds bins 8l..8l+7; the first lane whose running count passes rank has it
            int c[8], sum;
            const int inc = lane_entries_scan(s_hist, c, &sum);
            const unsigned hit = __ballot_sync(0xFFFFFFFFu, below + inc > rank);  // counts are exact: never empty
            if (lane == __ffs(hit) - 1) {
                int run = below + inc - sum, d = 0;
                for (; d < 7 && run + c[d] <= rank; d++) run += c[d];
                s_digit = lane * 8 + d;
                s_below = run;
            }
        }
        __syncthreads();
        prefix |= (unsigned)s_digit << shift;
        below = s_below;
        __syncthreads();  // s_hist, s_digit rewritten next pass
    }
    return prefix;
}

// Exclusive prefix sums of v[0..SAMPLE_SEGMENTS) in place, by warp 0 (lane l holds 4 consecutive entries); the total
// into *total. The caller syncs before and after.
template <typename W>
__device__ __forceinline__ void segments_exclusive_scan(W* v, W* total) {
    static_assert(SAMPLE_SEGMENTS == 128, "four segments a lane");
    const int lane = threadIdx.x & 31;
    W c[4], sum;
    const W inc = lane_entries_scan(v, c, &sum);
    W run = inc - sum;  // exact for counts; for masses one more rounding, well inside the ~1e-16 the draw allows
    if (lane == 31) *total = inc;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        v[lane * 4 + q] = run;
        run += c[q];
    }
}

struct KeyMass {
    unsigned k;
    double e;
};
struct ValueMass {
    float v;
    double e;
};

// top-p's cut for n <= SAMPLE_THREADS items (a top-k list), as the host computes it: the items sorted ascending by
// (key, position) in one block-wide bitonic sort, their probabilities e / sum summed in that order (from start, the
// mass of the items before them), and the first rank whose sum passes 1 - p (never past the last) is the cut:
// *cut_key its key, *cut_ties the items of that key ranked below it. Eight search passes for ~100 items took ~25 us.
template <typename KeyOf, typename Expo>
__device__ void top_p_cut_sorted(int n, KeyOf key_of, Expo expo, double start, double sum, double one_minus_p,
                                 unsigned* cut_key, long long* cut_ties) {
    __shared__ unsigned long long s_sorted[SAMPLE_THREADS];
    __shared__ double s_wsum[SAMPLE_WARPS];
    __shared__ int s_min[SAMPLE_WARPS];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    s_sorted[t] = t < n ? ((unsigned long long)key_of(t) << 32) | (unsigned)t : ~0ull;
    __syncthreads();
    for (int k = 2; k <= SAMPLE_THREADS; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            const int other = t ^ j;
            if (other > t) {
                const unsigned long long a = s_sorted[t], b = s_sorted[other];
                if ((a > b) == ((t & k) == 0)) {
                    s_sorted[t] = b;
                    s_sorted[other] = a;
                }
            }
            __syncthreads();
        }
    }
    const unsigned key = (unsigned)(s_sorted[t] >> 32);
    const double p = t < n ? expo(key_value(key)) / sum : 0.0;
    const double inc = warp_inclusive_scan(p);
    if (lane == 31) s_wsum[warp] = inc;
    __syncthreads();
    double cum = start + inc;
    for (int w = 0; w < warp; w++) cum += s_wsum[w];
    const int rank = sample_block_min(t < n && cum > one_minus_p ? t : n - 1, s_min);
    const unsigned k_cut = (unsigned)(s_sorted[rank] >> 32);
    const int first = sample_block_min(t < n && key == k_cut ? t : n - 1, s_min);
    *cut_key = k_cut;
    *cut_ties = rank - first;
    __syncthreads();  // s_sorted is rewritten by a later call
}

// top-p and the draw over n items in index order: value_of(j) the item's value after temperature and top-k, index_of(j)
// its token. SortSmall: a list of at most SAMPLE_THREADS items cuts top-p by sorting (top_p_cut_sorted) instead of
// searching. ex (n doubles, or null): where top-p's first pass keeps each item's e^(v - max) for the later passes (a
// double exponential each time cost more than the 8-byte load). outside: the summed e^(v - max) of the row's items
// that are not among the n (all below them); returns -1 when top-p would not drop them all (the caller then runs the
// whole row), else the token.
template <bool SortSmall, typename ValueOf, typename IndexOf>
__device__ int top_p_and_draw(int n, ValueOf value_of, IndexOf index_of, float mx, double one_minus_p, double u,
                              double* ex, double outside) {
    __shared__ double s_d[SAMPLE_WARPS];
    __shared__ long long s_l[SAMPLE_WARPS];
    __shared__ double s_mass[SAMPLE_SEGMENTS];      // each segment's mass, then the mass before it
    __shared__ long long s_ties[SAMPLE_SEGMENTS];   // each segment's ties at cut_key, then those before it
    __shared__ int s_last[SAMPLE_SEGMENTS];         // each segment's last item with mass, or -1
    __shared__ double s_total;
    __shared__ long long s_tie_total;
    __shared__ int s_pick;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // e^(v - max) as the host's softmax: the difference in float, the exponential in double; -infinity gives 0
    auto expo = [&](float v) { return v == -INFINITY ? 0.0 : exp((double)(v - mx)); };
    auto key_of = [&](int j) { return order_key(value_of(j)); };
    const bool stored = ex != nullptr && one_minus_p > 0;  // ex is filled by top-p's sum pass
    auto load_key_mass = [&](int j) { return KeyMass{key_of(j), stored ? ex[j] : 0.0}; };
    auto load_value_mass = [&](int j) { return ValueMass{value_of(j), stored ? ex[j] : 0.0}; };

    // top-p: the key of the first ascending position whose cumulative probability exceeds 1 - p, and how many of the
    // items with that key (index order) still go (cut_ties); nothing goes without top-p
    unsigned cut_key = 0;
    long long cut_ties = 0;
    if (one_minus_p > 0) {
        double sum = 0;
        for_items(n, value_of, [&](int j, bool valid, float v) {
            if (!valid) return;
            const double e = expo(v);
            if (stored) ex[j] = e;
            sum += e;
        });
        sum = sample_block_sum(sum, s_d) + outside;  // its barrier also makes ex visible to the block
        if (outside / sum > one_minus_p) return -1;    // the host would keep some item outside the n
        bool sorted = false;
        if constexpr (SortSmall) {  // (the whole row's instantiation leaves it out: its shared memory would not fit)
            if (n <= SAMPLE_THREADS) {
                top_p_cut_sorted(n, key_of, expo, outside / sum, sum, one_minus_p, &cut_key, &cut_ties);
                sorted = true;
            }
        }
        if (!sorted) {
            double below = 0;
            const bool crossed = search_key(n, load_key_mass, [&](const KeyMass& km) {
                return (stored ? km.e : expo(key_value(km.k))) / sum;
            }, outside / sum, one_minus_p, &cut_key, &below);
            if (!crossed) cut_key = order_key(mx);  // the host's loop then drops all but the last item
            long long tied = 0;
            for_items(n, key_of, [&](int, bool valid, unsigned k) { tied += valid && k == cut_key; });
            tied = sample_block_sum(tied, s_l);
            if (!crossed) {
                cut_ties = tied - 1;
            } else {
                const double q = expo(key_value(cut_key)) / sum;  // each tied item's probability
                long long j = q > 0 ? (long long)floor((one_minus_p - below) / q) : 0;
                j = max(0LL, min(j, tied));
                while (j > 0 && below + (double)j * q > one_minus_p) j--;
                while (j < tied && below + (double)(j + 1) * q <= one_minus_p) j++;
                cut_ties = min(j, tied - 1);
            }
        }
    }

    // The draw over SAMPLE_SEGMENTS index-order segments (a multiple of 32 items each; warp w takes w, w + 16, ...):
    // ties at cut_key before each segment, then each segment's kept mass, then one warp walks the segment holding u.
    const int seg = ((n + SAMPLE_SEGMENTS - 1) / SAMPLE_SEGMENTS + 31) & ~31;
    const unsigned lower_lanes = (1u << lane) - 1;
    if (cut_ties > 0) {
        for (int sg = warp; sg < SAMPLE_SEGMENTS; sg += SAMPLE_WARPS) {
            long long c = 0;
            for_warp_items(min(n, sg * seg), min(n, (sg + 1) * seg), key_of, [&](int, bool valid, unsigned k) {
                c += __popc(__ballot_sync(0xFFFFFFFFu, valid && k == cut_key));
                return true;
            });
            if (lane == 0) s_ties[sg] = c;
        }
        __syncthreads();
        if (warp == 0) segments_exclusive_scan(s_ties, &s_tie_total);
        __syncthreads();
    }
    // item j kept (rank: ties at cut_key before it, counted as the warp goes)
    auto kept_mass = [&](bool valid, const ValueMass& vm, long long& rank) {
        const unsigned k = order_key(vm.v);
        const bool tie = valid && k == cut_key;
        const unsigned ties = __ballot_sync(0xFFFFFFFFu, tie);
        const long long r = rank + __popc(ties & lower_lanes);
        rank += __popc(ties);
        const bool kept = valid && (one_minus_p <= 0 || k > cut_key || (tie && r >= cut_ties));
        return kept ? (stored ? vm.e : expo(vm.v)) : 0.0;
    };
    for (int sg = warp; sg < SAMPLE_SEGMENTS; sg += SAMPLE_WARPS) {
        long long rank = cut_ties > 0 ? s_ties[sg] : 0;
        double mass = 0;
        int last = -1;
        for_warp_items(min(n, sg * seg), min(n, (sg + 1) * seg), load_value_mass, [&](int j, bool valid,
                                                                                        const ValueMass& vm) {
            const double e = kept_mass(valid, vm, rank);
            mass += e;
            const unsigned nz = __ballot_sync(0xFFFFFFFFu, e != 0);
            if (nz) last = j - lane + 31 - __clz(nz);
            return true;
        });
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mass += __shfl_xor_sync(0xFFFFFFFFu, mass, o);
        if (lane == 0) {
            s_mass[sg] = mass;
            s_last[sg] = last;
        }
    }
    __syncthreads();
    if (warp == 0) {
        double seg_mass[4];
#pragma unroll
        for (int q = 0; q < 4; q++) seg_mass[q] = s_mass[lane * 4 + q];
        segments_exclusive_scan(s_mass, &s_total);
        __syncwarp();
        const double total = s_total;
        // the first segment whose cumulative mass passes u; none (u past the rounded total): the last item with mass
        int found = -1;
#pragma unroll
        for (int q = 3; q >= 0; q--) {
            if (seg_mass[q] > 0 && u < (s_mass[lane * 4 + q] + seg_mass[q]) / total) found = lane * 4 + q;
        }
        const unsigned has = __ballot_sync(0xFFFFFFFFu, found >= 0);
        const int sg = has ? __shfl_sync(0xFFFFFFFFu, found, __ffs(has) - 1) : -1;
        int pick = -1;
        if (sg >= 0) {
            long long rank = cut_ties > 0 ? s_ties[sg] : 0;
            double cum = s_mass[sg] / total;
            for_warp_items(min(n, sg * seg), min(n, (sg + 1) * seg), load_value_mass, [&](int j, bool valid,
                                                                                            const ValueMass& vm) {
                const double p = kept_mass(valid, vm, rank) / total;
                const double inc = warp_inclusive_scan(p);
                const unsigned hit = __ballot_sync(0xFFFFFFFFu, p != 0 && u < cum + inc);
                if (hit) {
                    pick = j - lane + __ffs(hit) - 1;
                    return false;
                }
                cum += __shfl_sync(0xFFFFFFFFu, inc, 31);
                return true;
            });
            if (pick < 0) pick = s_last[sg];  // rounding: u past the segment's own sum
        } else {
            int last = -1;
#pragma unroll
            for (int q = 0; q < 4; q++) last = max(last, s_last[lane * 4 + q]);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(0xFFFFFFFFu, last, o));
            pick = last;
        }
        if (lane == 0) s_pick = pick < 0 ? -1 : index_of(pick);
    }
    __syncthreads();
    const int token = s_pick;
    __syncthreads();  // s_pick is rewritten by a later call
    return token < 0 ? 0 : token;  // nothing has mass (all -infinity): token 0
}

// Over a histogram of SAMPLE_BINS counts, the first bin from the top whose count from the top (itself included) passes
// limit: *bin (-1 when none does), *above (the count of the bins above it), *with (that plus its own). Warp 0 finds it;
// every thread gets it. Ends with a barrier (the histogram's memory may be reused after it).
__device__ void first_bin_from_top(const int* hist, int limit, int* bin, int* above, int* with) {
    __shared__ int s_res[3];
    constexpr int PER_LANE = SAMPLE_BINS / 32;
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x, first = (31 - lane) * PER_LANE;  // lane 0 holds the top bins
        int sum = 0;
        for (int b = 0; b < PER_LANE; b++) sum += hist[first + b];
        const int inc = warp_inclusive_scan(sum);
        const unsigned hit = __ballot_sync(0xFFFFFFFFu, inc > limit);
        if (!hit && lane == 31) {
            s_res[0] = -1;
            s_res[1] = s_res[2] = inc;
        }
        if (hit && lane == __ffs(hit) - 1) {
            int run = inc - sum, b = PER_LANE - 1;
            for (; b > 0 && run + hist[first + b] <= limit; b--) run += hist[first + b];
            s_res[0] = first + b;
            s_res[1] = run;
            s_res[2] = run + hist[first + b];
        }
    }
    __syncthreads();
    *bin = s_res[0];
    *above = s_res[1];
    *with = s_res[2];
    __syncthreads();
}

// The first pass, spread over gridDim.x blocks a row (a row's block alone has one SM): the values Sampler.sample starts
// from (excluded ids at -infinity, divided by the temperature) as order keys into keys [B, V] (later passes read 4
// bytes instead of converting, masking and dividing again), their count by top 12 bits added into hist [B, SAMPLE_BINS]
// and their largest key into max_key [B] (both zero before; sample_row reads and re-zeroes them).
template <typename T>
__device__ __forceinline__ void sample_prepare_row(const T* __restrict__ logits, int vocab,
                                                   const unsigned char* seen_all, float penalty, int n_excluded,
                                                   int e0, int e1, int e2, int e3, float temperature,
                                                   unsigned* keys_all, int* hist_all, unsigned* max_key,
                                                   int* status) {
    __shared__ int s_hist[SAMPLE_BINS];
    __shared__ float s_f[SAMPLE_WARPS];
    const int lane = threadIdx.x & 31, row = blockIdx.y;
    const int slice = ((vocab + gridDim.x - 1) / gridDim.x + 31) & ~31;
    const int lo = min(vocab, (int)blockIdx.x * slice), hi = min(vocab, lo + slice);
    const T* x = logits + (int64_t)row * vocab;
    unsigned* keys = keys_all + (int64_t)row * vocab;
    const unsigned char* seen = seen_all ? seen_all + (int64_t)row * vocab : nullptr;
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += SAMPLE_THREADS) s_hist[b] = 0;
    __syncthreads();
    float mx = -INFINITY;
    for_items(hi, [&](int i) { return x[i]; }, [&](int i, bool valid, T raw) {
        unsigned k = 0;
        if (valid) {
            const float v = __fdiv_rn(penalized(to_f32(raw), i, seen, penalty, n_excluded, e0, e1, e2, e3),
                                      temperature);
            // no distribution to sample from (infer.Sampler#sample refuses it too; torch.multinomial raises)
            if (isnan(v) || v == INFINITY) report_error(status, 4, row, vocab);
            k = order_key(v);
            keys[i] = k;
            mx = fmaxf(mx, v);
        }
        const unsigned act = __ballot_sync(0xFFFFFFFFu, valid);
        if (valid) {
            const unsigned bin = k >> SAMPLE_BIN_SHIFT;
            const unsigned peers = __match_any_sync(act, bin);
            if (lane == __ffs(peers) - 1) atomicAdd(&s_hist[bin], __popc(peers));
        }
    }, lo);
    mx = sample_block_max(mx, s_f);  // its barrier also completes the block's histogram
    int* hist = hist_all + (int64_t)row * SAMPLE_BINS;
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += SAMPLE_THREADS) {
        if (s_hist[b]) atomicAdd(&hist[b], s_hist[b]);
    }
    if (threadIdx.x == 0 && lo < hi) atomicMax(&max_key[row], order_key(mx));
}

__device__ __forceinline__ void sample_row(int vocab, int top_k, double one_minus_p, const double* __restrict__ uniforms,
                                           unsigned* scratch, double* masses, int* hist_all, unsigned* max_key,
                                           unsigned char* seen, int* __restrict__ token, int* __restrict__ next_ids) {
    __shared__ double s_d[SAMPLE_WARPS];
    // first a histogram of the keys' top bits (SAMPLE_BINS ints), then the list of candidates: keys, then indices
    __shared__ __align__(16) unsigned s_pool[2 * SAMPLE_LIST];
    static_assert(SAMPLE_BINS <= 2 * SAMPLE_LIST, "the histogram fits the pool");
    int* hist = reinterpret_cast<int*>(s_pool);
    unsigned* list_key = s_pool;
    int* list_index = reinterpret_cast<int*>(s_pool + SAMPLE_LIST);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned* keys = scratch + (int64_t)blockIdx.x * vocab;  // written by sample_prepare, read and written here

    // The first pass's results (sample_prepare_row): the largest value and the keys' counts by top bits, read and
    // zeroed for the next launch.
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += SAMPLE_THREADS) {
        int* g = hist_all + (int64_t)blockIdx.x * SAMPLE_BINS + b;
        hist[b] = *g;
        *g = 0;
    }
    __shared__ unsigned s_max;
    if (threadIdx.x == 0) {
        s_max = max_key[blockIdx.x];
        max_key[blockIdx.x] = 0;
    }
    __syncthreads();
    const float mx = key_value(s_max);
    const double u = uniforms[blockIdx.x];
    const bool top_k_on = top_k > 0 && top_k < vocab;
    auto expo = [&](float v) { return v == -INFINITY ? 0.0 : exp((double)(v - mx)); };

    // The candidates, when they fit the list: with top-k, the items of the bins that hold the k largest; with top-p
    // alone, the top bins that fit (top-p must then drop everything below them, which holds for peaked
    // distributions). Their k-th largest, top-p and the draw then run on the list.
    int pick = -1;
    if (top_k_on || one_minus_p > 0) {
        int bin, above, with;
        first_bin_from_top(hist, top_k_on ? top_k - 1 : SAMPLE_LIST, &bin, &above, &with);
        const int lo_bin = top_k_on ? bin : bin + 1;
        const int count = top_k_on ? with : above;
        if (count > 0 && count <= SAMPLE_LIST) {
            __shared__ int s_at[SAMPLE_SEGMENTS];  // each segment's candidates, then the candidates before it
            __shared__ int s_count;
            const unsigned lower_lanes = (1u << lane) - 1, lo_key = (unsigned)lo_bin << SAMPLE_BIN_SHIFT;
            const int seg = ((vocab + SAMPLE_SEGMENTS - 1) / SAMPLE_SEGMENTS + 31) & ~31;
            auto key_at = [&](int i) { return keys[i]; };
            double outside = 0;  // top-p alone: the e^(v - max) of the items below the candidates
            for (int sg = warp; sg < SAMPLE_SEGMENTS; sg += SAMPLE_WARPS) {
                int c = 0;
                const int lo = min(vocab, sg * seg), hi = min(vocab, (sg + 1) * seg);
                for_warp_items(lo, hi, key_at, [&](int, bool valid, unsigned k) {
                    const bool in = valid && k >= lo_key;
                    if (!top_k_on && valid && !in) outside += expo(key_value(k));
                    c += __popc(__ballot_sync(0xFFFFFFFFu, in));
                    return true;
                });
                if (lane == 0) s_at[sg] = c;
            }
            __syncthreads();
            if (warp == 0) segments_exclusive_scan(s_at, &s_count);
            __syncthreads();
            for (int sg = warp; sg < SAMPLE_SEGMENTS; sg += SAMPLE_WARPS) {
                int at = s_at[sg];
                const int lo = min(vocab, sg * seg), hi = min(vocab, (sg + 1) * seg);
                for_warp_items(lo, hi, key_at, [&](int i, bool valid, unsigned k) {
                    const bool in = valid && k >= lo_key;
                    const unsigned b = __ballot_sync(0xFFFFFFFFu, in);
                    if (in) {
                        list_key[at + __popc(b & lower_lanes)] = k;
                        list_index[at + __popc(b & lower_lanes)] = i;
                    }
                    at += __popc(b);
                    return true;
                });
            }
            outside = top_k_on ? 0.0 : sample_block_sum(outside, s_d);
            __syncthreads();
            // top-k's threshold among the candidates (a float compare as the host's: -0.0 is not below 0.0, so a
            // zero threshold is left to the whole row, where every zero is seen)
            const float kth = top_k_on ? key_value(select_rank_key(list_key, count, count - top_k)) : -INFINITY;
            if (kth != 0.0f) {
                pick = top_p_and_draw<true>(count, [&](int j) {
                    const float v = key_value(list_key[j]);
                    return v < kth ? -INFINITY : v;
                }, [&](int j) { return list_index[j]; }, mx, one_minus_p, u, nullptr, outside);
            }
        }
    }
    if (pick < 0) {  // the whole row
        const float kth = top_k_on ? key_value(select_rank_key(keys, vocab, vocab - top_k)) : -INFINITY;
        pick = top_p_and_draw<false>(vocab, [&](int i) {
            const float v = key_value(keys[i]);
            return v < kth ? -INFINITY : v;
        }, [](int i) { return i; }, mx, one_minus_p, u, masses + (int64_t)blockIdx.x * vocab, 0.0);
    }
    if (threadIdx.x == 0) {
        token[blockIdx.x] = pick;
        if (next_ids) next_ids[blockIdx.x] = pick;
        if (seen) seen[(int64_t)blockIdx.x * vocab + pick] = 1;  // the next step's penalty sees it
    }
}

#define QL_SAMPLE_PREPARE(tn, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_prepare_##tn(                            \
        const T* __restrict__ logits, int vocab, const unsigned char* seen, float penalty, int n_excluded, int e0, \
        int e1, int e2, int e3, float temperature, unsigned* keys, int* hist, unsigned* max_key, int* status) {   \
        sample_prepare_row<T>(logits, vocab, seen, penalty, n_excluded, e0, e1, e2, e3, temperature, keys, hist,  \
                              max_key, status);                                                                   \
    }
QL_SAMPLE_PREPARE(f32, float)
QL_SAMPLE_PREPARE(bf16, __nv_bfloat16)
QL_SAMPLE_PREPARE(f16, __half)

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(int vocab, int top_k, double one_minus_p,
                                                                         const double* __restrict__ uniforms,
                                                                         unsigned* keys, double* masses, int* hist,
                                                                         unsigned* max_key, unsigned char* seen,
                                                                         int* __restrict__ token,
                                                                         int* __restrict__ next_ids) {
    sample_row(vocab, top_k, one_minus_p, uniforms, keys, masses, hist, max_key, seen, token, next_ids);
}
