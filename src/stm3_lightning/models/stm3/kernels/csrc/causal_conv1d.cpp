// Depthwise causal conv1d (+ bias, optional SiLU) for CPU, vectorised over W channels; D is padded to Dp.
#include "prelude.h"

struct ConvArgs {
    const float *x;            // [b, D, L] with strides (sxb, sxd, sxt)
    const float *w, *bias;     // w: [K, Dp] (transposed, zero-padded); bias: [Dp] or null
    const float *dy;           // [b, D, L] with strides (sgb, sgd, sgt); backward only
    float *y, *dx;             // contiguous [b, L, Dp] outputs
    int64_t sxb, sxd, sxt, sgb, sgd, sgt, D, Dp, K, L;
    int silu;
};

// dst[(pad + t) * Dp + d] = src[b * sb + d * sd + t * st] for t < L, d < D (other entries untouched).
static void gather(const float *src, int64_t sb, int64_t sd, int64_t st, int64_t b, int64_t D, int64_t Dp,
                   int64_t L, float *dst) {
    const float *s = src + b * sb;
    if (sd == 1) {
        for (int64_t t = 0; t < L; ++t) memcpy(dst + t * Dp, s + t * st, sizeof(float) * D);
    } else {
        for (int64_t d = 0; d < D; ++d)
            for (int64_t t = 0; t < L; ++t) dst[t * Dp + d] = s[d * sd + t * st];
    }
}

// Pre-activation conv output at step t for channels [d0, d0 + W); X holds K - 1 zero rows then the input.
INLINE vf conv_at(const ConvArgs &a, const float *X, int64_t t, int64_t d0) {
    vf acc = a.bias ? ld(a.bias + d0) : vf{};
    for (int64_t j = 0; j < a.K; ++j) acc += ld(a.w + j * a.Dp + d0) * ld(X + (t + j) * a.Dp + d0);
    return acc;
}

extern "C" {
void stm3_conv_fwd(const ConvArgs *pa, int64_t b0, int64_t b1) {
    FlushDenormals guard;
    const ConvArgs &a = *pa;
    const int64_t Dp = a.Dp, L = a.L, K = a.K;
    float *X = (float *)calloc((L + K) * Dp, sizeof(float));
    for (int64_t b = b0; b < b1; ++b) {
        gather(a.x, a.sxb, a.sxd, a.sxt, b, a.D, Dp, L, X + (K - 1) * Dp);
        float *yb = a.y + b * L * Dp;
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                const vf p = conv_at(a, X, t, d0);
                st(yb + t * Dp + d0, a.silu ? p * vsigmoid(p) : p);
            }
    }
    free(X);
}

// dw: [K, Dp] and dbias: [Dp], accumulated into (one set per concurrent call).
void stm3_conv_bwd(const ConvArgs *pa, int64_t b0, int64_t b1, float *dw, float *dbias) {
    FlushDenormals guard;
    const ConvArgs &a = *pa;
    const int64_t Dp = a.Dp, L = a.L, K = a.K;
    float *X = (float *)calloc((L + K) * Dp, sizeof(float)), *G = (float *)calloc((L + K) * Dp, sizeof(float));
    for (int64_t b = b0; b < b1; ++b) {
        gather(a.x, a.sxb, a.sxd, a.sxt, b, a.D, Dp, L, X + (K - 1) * Dp);
        gather(a.dy, a.sgb, a.sgd, a.sgt, b, a.D, Dp, L, G);
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                vf g = ld(G + t * Dp + d0);
                if (a.silu) {
                    const vf p = conv_at(a, X, t, d0), s = vsigmoid(p);
                    g *= s * (1.0f + p * (1.0f - s));
                }
                st(G + t * Dp + d0, g);
                st(dbias + d0, ld(dbias + d0) + g);
                for (int64_t j = 0; j < K; ++j)
                    st(dw + j * Dp + d0, ld(dw + j * Dp + d0) + g * ld(X + (t + j) * Dp + d0));
            }
        float *dxb = a.dx + b * L * Dp;
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                vf acc = vf{};
                for (int64_t j = 0; j < K; ++j) acc += ld(a.w + j * Dp + d0) * ld(G + (t + K - 1 - j) * Dp + d0);
                st(dxb + t * Dp + d0, acc);
            }
    }
    free(X); free(G);
}
}
