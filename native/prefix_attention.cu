// prefix_attention.cu — prefix tuning's attention over P learned keys/values placed before every sequence
// (Backend.prefixAttention / prefixAttentionBackward; CPU twin: backend/cpu/PrefixAttention.java).
//
// Tensors (T = float or __nv_bfloat16, the activation dtype): q, out_s, out, dout, dq [N = B*T, H*D];
// kp, vp [P, KH*D]; lse_s, lse F32 [B, H, T]; probs, dscores F32 [N, H, P] (backward scratch);
// part_k, part_v F32 [chunks, P, KH*D]; gk, gv F32 [P, KH*D] accumulators. Query head h reads kv head
// h / (H / KH). D <= 32 * PA_MAX_DPL (checked by the launcher).
//
//   prefix_attn_fwd_<t>          one warp per (token n, head h), 4 warps per block: online softmax over the
//                                P prefix keys (lanes split D; warp_sum gives every lane the same score),
//                                lse_p = m + log(l), out_p = acc / l; then the LSE merge with the sequence
//                                part: lse = logaddexp(lse_s, lse_p), out = out_s e^(lse_s-lse) + out_p e^(lse_p-lse)
//   prefix_attn_bwd_q_<t>        same mapping: delta = dO . out, p_j = exp(s_j - lse), ds_j = p_j (dO . vp_j - delta)
//                                * scale; dq += sum_j ds_j kp_j (read-add-write of the caller's dq); p and ds to scratch
//   prefix_attn_bwd_kv_part_<t>  grid (P*KH, chunks), threads over d: partial sums over the chunk's tokens (in order)
//                                and the group's heads (in order) of ds q and p dO, one slot per chunk
//   prefix_attn_bwd_kv_sum       1-D grid-stride over P*KH*D: gk += sum of the chunks' partials in chunk order
// No atomics: the result depends only on the shapes, not on scheduling. Arithmetic in float32, one rounding
// on store.
#include "activations.cuh"

#define PA_MAX_DPL 8

template <typename T>
__device__ __forceinline__ void prefix_fwd_impl(const T* __restrict__ q, const T* __restrict__ kp, const T* __restrict__ vp,
                                                const T* __restrict__ out_s, const float* __restrict__ lse_s,
                                                T* __restrict__ out, float* __restrict__ lse, int N, int T_, int H, int KH,
                                                int D, int P, float scale) {
    const int lane = threadIdx.x & 31;
    const int64_t pair = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (pair >= (int64_t)N * H) return;  // uniform per warp: the whole warp leaves together
    const int n = (int)(pair / H), h = (int)(pair % H);
    const int kh = h / (H / KH);
    const int64_t qo = (int64_t)n * H * D + (int64_t)h * D;
    float qv[PA_MAX_DPL], acc[PA_MAX_DPL];
#pragma unroll
    for (int i = 0; i < PA_MAX_DPL; i++) {
        int d = lane + 32 * i;
        qv[i] = d < D ? to_f32(q[qo + d]) : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int j = 0; j < P; j++) {
        const int64_t ko = (int64_t)j * KH * D + (int64_t)kh * D;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) s = fmaf(qv[i], to_f32(kp[ko + d]), s);
        }
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
        const float e = expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) acc[i] = fmaf(e, to_f32(vp[ko + d]), acc[i] * corr);
        }
        m = m_new;
    }
    const float lse_p = m + logf(l);
    const int b = n / T_, t = n % T_;
    const int64_t li = ((int64_t)b * H + h) * T_ + t;
    const float ls = lse_s[li];
    const float mm = fmaxf(ls, lse_p);  // lse_p is finite, so mm is too
    const float total = mm + logf(expf(ls - mm) + expf(lse_p - mm));
    const float ws = expf(ls - total), wp = expf(lse_p - total);
#pragma unroll
    for (int i = 0; i < PA_MAX_DPL; i++) {
        int d = lane + 32 * i;
        if (d < D) out[qo + d] = from_f32<T>(to_f32(out_s[qo + d]) * ws + (acc[i] / l) * wp);
    }
    if (lane == 0) lse[li] = total;
}

template <typename T>
__device__ __forceinline__ void prefix_bwd_q_impl(const T* __restrict__ q, const T* __restrict__ kp, const T* __restrict__ vp,
                                                  const T* __restrict__ out, const float* __restrict__ lse,
                                                  const T* __restrict__ dout, T* __restrict__ dq, float* __restrict__ probs,
                                                  float* __restrict__ dscores, int N, int T_, int H, int KH, int D, int P,
                                                  float scale) {
    const int lane = threadIdx.x & 31;
    const int64_t pair = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (pair >= (int64_t)N * H) return;
    const int n = (int)(pair / H), h = (int)(pair % H);
    const int kh = h / (H / KH);
    const int64_t qo = (int64_t)n * H * D + (int64_t)h * D;
    float qv[PA_MAX_DPL], gv[PA_MAX_DPL], dqa[PA_MAX_DPL];
    float delta = 0.f;
#pragma unroll
    for (int i = 0; i < PA_MAX_DPL; i++) {
        int d = lane + 32 * i;
        qv[i] = d < D ? to_f32(q[qo + d]) : 0.f;
        gv[i] = d < D ? to_f32(dout[qo + d]) : 0.f;
        if (d < D) delta = fmaf(gv[i], to_f32(out[qo + d]), delta);
        dqa[i] = 0.f;
    }
    delta = warp_sum(delta);
    const int b = n / T_, t = n % T_;
    const float row_lse = lse[((int64_t)b * H + h) * T_ + t];
    for (int j = 0; j < P; j++) {
        const int64_t ko = (int64_t)j * KH * D + (int64_t)kh * D;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) {
                s = fmaf(qv[i], to_f32(kp[ko + d]), s);
                dp = fmaf(gv[i], to_f32(vp[ko + d]), dp);
            }
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        const float p = expf(s * scale - row_lse);
        const float ds = p * (dp - delta) * scale;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++) {
            int d = lane + 32 * i;
            if (d < D) dqa[i] = fmaf(ds, to_f32(kp[ko + d]), dqa[i]);
        }
        if (lane == 0) {
            probs[pair * P + j] = p;
            dscores[pair * P + j] = ds;
        }
    }
#pragma unroll
    for (int i = 0; i < PA_MAX_DPL; i++) {
        int d = lane + 32 * i;
        if (d < D) dq[qo + d] = from_f32<T>(to_f32(dq[qo + d]) + dqa[i]);
    }
}

template <typename T>
__device__ __forceinline__ void prefix_bwd_kv_part_impl(const T* __restrict__ q, const T* __restrict__ dout,
                                                        const float* __restrict__ probs, const float* __restrict__ dscores,
                                                        float* __restrict__ part_k, float* __restrict__ part_v, int N, int H,
                                                        int KH, int D, int P, int rows_per_chunk) {
    const int unit = blockIdx.x;  // j * KH + kh
    const int j = unit / KH, kh = unit % KH;
    const int group = H / KH;
    const int chunk = blockIdx.y;
    const int n0 = chunk * rows_per_chunk;
    const int n1 = min(N, n0 + rows_per_chunk);
    const int64_t slot = ((int64_t)chunk * P + j) * KH * D + (int64_t)kh * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float ak = 0.f, av = 0.f;
        for (int n = n0; n < n1; n++) {
            for (int g = 0; g < group; g++) {
                const int h = kh * group + g;
                const int64_t pair = (int64_t)n * H + h;
                const int64_t qo = pair * D + d;  // (n*H + h)*D + d: row n, head h, dim d
                ak = fmaf(dscores[pair * P + j], to_f32(q[qo]), ak);
                av = fmaf(probs[pair * P + j], to_f32(dout[qo]), av);
            }
        }
        part_k[slot + d] = ak;
        part_v[slot + d] = av;
    }
}

__device__ __forceinline__ void prefix_bwd_kv_sum_impl(const float* __restrict__ part_k, const float* __restrict__ part_v,
                                                       float* __restrict__ gk, float* __restrict__ gv, int64_t count,
                                                       int chunks) {
    for (int64_t i = global_thread_index(); i < count; i += grid_stride()) {
        float sk = 0.f, sv = 0.f;
        for (int c = 0; c < chunks; c++) {
            sk += part_k[(int64_t)c * count + i];
            sv += part_v[(int64_t)c * count + i];
        }
        gk[i] += sk;
        gv[i] += sv;
    }
}

#define QL_PREFIX_ATTENTION(tn, T)                                                                                   \
    extern "C" __global__ void prefix_attn_fwd_##tn(const T* q, const T* kp, const T* vp, const T* out_s,              \
                                                    const float* lse_s, T* out, float* lse, int N, int T_, int H,      \
                                                    int KH, int D, int P, float scale) {                              \
        prefix_fwd_impl<T>(q, kp, vp, out_s, lse_s, out, lse, N, T_, H, KH, D, P, scale);                            \
    }                                                                                                                \
    extern "C" __global__ void prefix_attn_bwd_q_##tn(const T* q, const T* kp, const T* vp, const T* out,              \
                                                      const float* lse, const T* dout, T* dq, float* probs,           \
                                                      float* dscores, int N, int T_, int H, int KH, int D, int P,     \
                                                      float scale) {                                                  \
        prefix_bwd_q_impl<T>(q, kp, vp, out, lse, dout, dq, probs, dscores, N, T_, H, KH, D, P, scale);              \
    }                                                                                                                \
    extern "C" __global__ void prefix_attn_bwd_kv_part_##tn(const T* q, const T* dout, const float* probs,            \
                                                            const float* dscores, float* part_k, float* part_v,      \
                                                            int N, int H, int KH, int D, int P, int rows_per_chunk) { \
        prefix_bwd_kv_part_impl<T>(q, dout, probs, dscores, part_k, part_v, N, H, KH, D, P, rows_per_chunk);         \
    }

QL_FOR_ACT(QL_PREFIX_ATTENTION)

extern "C" __global__ void prefix_attn_bwd_kv_sum(const float* part_k, const float* part_v, float* gk, float* gv,
                                                  int64_t count, int chunks) {
    prefix_bwd_kv_sum_impl(part_k, part_v, gk, gv, count, chunks);
}
